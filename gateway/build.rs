//! Stamps the build with the commit it was built from, for `cardgate_build_info`.
//!
//! Reads `.git` directly, so that a build needs no `git` binary (a release tarball, a
//! container build without git): `CARDGATE_GIT_COMMIT` wins when a packager sets it,
//! then HEAD as `.git` records it, else "unknown".

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=CARDGATE_GIT_COMMIT");
    let commit = std::env::var("CARDGATE_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(head_commit)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=CARDGATE_GIT_COMMIT={}", commit.trim());
}

/// The commit HEAD names, following one symbolic ref through loose refs or
/// `packed-refs`. Asks cargo to rerun when HEAD or the ref it names moves.
fn head_commit() -> Option<String> {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let git = find_git_dir(&manifest)?;
    let head_file = git.join("HEAD");
    println!("cargo:rerun-if-changed={}", head_file.display());
    let head = std::fs::read_to_string(&head_file).ok()?;
    let head = head.trim();
    let Some(reference) = head.strip_prefix("ref: ") else {
        return is_commit(head).then(|| short(head));
    };
    // A linked worktree keeps HEAD in its own directory and refs in the common one.
    let common = std::fs::read_to_string(git.join("commondir"))
        .ok()
        .map(|c| git.join(c.trim()))
        .unwrap_or_else(|| git.clone());
    for dir in [&git, &common] {
        let loose = dir.join(reference);
        if loose.exists() {
            println!("cargo:rerun-if-changed={}", loose.display());
            let id = std::fs::read_to_string(&loose).ok()?;
            return is_commit(id.trim()).then(|| short(id.trim()));
        }
    }
    let packed = common.join("packed-refs");
    println!("cargo:rerun-if-changed={}", packed.display());
    let text = std::fs::read_to_string(packed).ok()?;
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(_, name)| *name == reference)
        .filter(|(id, _)| is_commit(id))
        .map(|(id, _)| short(id))
}

/// `.git` above the crate: a directory, or a file `gitdir: PATH` in a worktree.
fn find_git_dir(start: &Path) -> Option<PathBuf> {
    let mut dir = Some(start);
    while let Some(d) = dir {
        let candidate = d.join(".git");
        if candidate.is_dir() {
            return Some(candidate);
        }
        if candidate.is_file() {
            let text = std::fs::read_to_string(&candidate).ok()?;
            let path = text.trim().strip_prefix("gitdir: ")?;
            return Some(d.join(path));
        }
        dir = d.parent();
    }
    None
}

fn is_commit(s: &str) -> bool {
    s.len() >= 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn short(s: &str) -> String {
    s[..12].to_string()
}
