//! The console's signed-in sessions, their CSRF tokens, and the lock-out of names that
//! failed to sign in too often. In memory only: a restart signs everyone out, which is
//! the safe direction, and nothing here is a decision anyone is owed.
//!
//! A session is found by the SHA-256 of its cookie, as operators by the SHA-256 of
//! their token: the map's keys say nothing about the cookies. Each session also holds an
//! API key, never sent to the browser, that the console presents as a bearer token when
//! it calls the admin API for the session's operator: the API then applies its own
//! roles, audit trail and idempotency to the console's calls exactly as to a script's.

use std::collections::HashMap;
use std::sync::Arc;

use cardgate_domain::operator::Operator;
use sha2::{Digest, Sha256};

/// A session unused this long ends: a desk window left open while its operator is away.
pub const SESSION_IDLE_MS: i64 = 30 * 60_000;
/// A session ends this long after its sign-in however busy: one working shift.
pub const SESSION_LIFETIME_MS: i64 = 12 * 3_600_000;
/// Sessions kept at once; beyond it the one idle longest ends. A campus has tens of
/// operators; this bounds what a loop of sign-ins can take.
pub const SESSIONS_MAX: usize = 4096;
/// Failed sign-ins in a row that lock a name out.
pub const SIGN_IN_FAILURES_MAX: u32 = 5;
/// How long a name stays locked after its last allowed failure.
pub const LOCKOUT_MS: i64 = 15 * 60_000;
/// Names whose failures are remembered; beyond it, names with no lock are forgotten.
pub const FAILURE_NAMES_MAX: usize = 10_000;
/// Checked files waiting for their go-ahead, across all sessions: each may be a whole
/// import (32 MiB), and a campus has a data admin or two. Beyond it the file checked
/// longest ago must be uploaded again.
pub const PENDING_IMPORTS_MAX: usize = 4;
/// What a bearer token starts with when it is a console session's API key.
pub const SESSION_KEY_PREFIX: &str = "cgs_";

/// 32 random bytes as hex.
pub fn random_hex() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// Compares two secrets in time that depends on their lengths only.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A CSV file checked by a dry run and waiting for its operator's go-ahead, so that the
/// file imported is the file checked, without a second upload.
#[derive(Clone)]
pub struct PendingImport {
    pub id: String,
    pub checked_ms: i64,
    pub file_name: String,
    pub charset: Option<String>,
    pub bytes: Arc<[u8]>,
}

#[derive(Clone)]
pub struct Session {
    pub operator_id: u64,
    pub csrf: String,
    /// The bearer token the console presents to the API for this session.
    pub api_key: String,
    pub created_ms: i64,
    pub last_ms: i64,
    /// The password was set by someone else: nothing but choosing a new one until then.
    pub must_change: bool,
    /// When the password the session signed in with was set: another one set since
    /// (by anyone, by any path) ends the session.
    pub password_set_ms: Option<i64>,
    pub pending_import: Option<PendingImport>,
}

impl Session {
    fn expired(&self, now_ms: i64) -> bool {
        now_ms - self.last_ms >= SESSION_IDLE_MS || now_ms - self.created_ms >= SESSION_LIFETIME_MS
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Failures {
    count: u32,
    locked_until_ms: i64,
}

/// Whether a name may try to sign in now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// Locked until this time (unix ms).
    Locked(i64),
}

#[derive(Default)]
struct Inner {
    by_cookie: HashMap<[u8; 32], Session>,
    /// API key digest → cookie digest.
    by_key: HashMap<[u8; 32], [u8; 32]>,
    failures: HashMap<String, Failures>,
}

/// Every console session. One std mutex: each use is a few map operations, never held
/// across an `.await`.
#[derive(Clone, Default)]
pub struct Sessions {
    inner: Arc<std::sync::Mutex<Inner>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Starts a session for `op`; returns its cookie value.
    pub fn create(&self, op: &Operator, must_change: bool, password_set_ms: Option<i64>, now_ms: i64) -> String {
        let cookie = random_hex();
        let session = Session {
            operator_id: op.id,
            csrf: random_hex(),
            api_key: format!("{SESSION_KEY_PREFIX}{}", random_hex()),
            created_ms: now_ms,
            last_ms: now_ms,
            must_change,
            password_set_ms,
            pending_import: None,
        };
        let mut g = self.lock();
        if g.by_cookie.len() >= SESSIONS_MAX {
            g.by_cookie.retain(|_, s| !s.expired(now_ms));
            if g.by_cookie.len() >= SESSIONS_MAX
                && let Some(oldest) = g.by_cookie.iter().min_by_key(|(_, s)| s.last_ms).map(|(k, _)| *k)
            {
                g.by_cookie.remove(&oldest);
            }
            let Inner { by_cookie, by_key, .. } = &mut *g;
            by_key.retain(|_, c| by_cookie.contains_key(c));
        }
        let c = digest(&cookie);
        g.by_key.insert(digest(&session.api_key), c);
        g.by_cookie.insert(c, session);
        cookie
    }

    /// The live session behind a cookie, marked used now; an expired one ends here.
    pub fn touch(&self, cookie: &str, now_ms: i64) -> Option<Session> {
        let c = digest(cookie);
        let mut g = self.lock();
        let expired = g.by_cookie.get(&c)?.expired(now_ms);
        if expired {
            if let Some(s) = g.by_cookie.remove(&c) {
                g.by_key.remove(&digest(&s.api_key));
            }
            return None;
        }
        let s = g.by_cookie.get_mut(&c)?;
        s.last_ms = now_ms;
        Some(s.clone())
    }

    /// The operator id behind a session's API key, while the session lives.
    pub fn operator_of_key(&self, key: &str, now_ms: i64) -> Option<u64> {
        let g = self.lock();
        let c = g.by_key.get(&digest(key))?;
        g.by_cookie.get(c).filter(|s| !s.expired(now_ms)).map(|s| s.operator_id)
    }

    /// Ends a session (sign-out).
    pub fn end(&self, cookie: &str) -> Option<Session> {
        let mut g = self.lock();
        let s = g.by_cookie.remove(&digest(cookie))?;
        g.by_key.remove(&digest(&s.api_key));
        Some(s)
    }

    /// Ends every session of an operator (its password changed), except the one whose
    /// API key is `except_key` (the session that changed it).
    pub fn end_operator_except_key(&self, operator_id: u64, except_key: Option<&str>) {
        let mut g = self.lock();
        let Inner { by_cookie, by_key, .. } = &mut *g;
        let keep = except_key.and_then(|k| by_key.get(&digest(k)).copied());
        by_cookie.retain(|c, s| s.operator_id != operator_id || Some(*c) == keep);
        by_key.retain(|_, c| by_cookie.contains_key(c));
    }

    /// The session's own operator chose a new password through it: it lives on under
    /// the new one.
    pub fn password_changed(&self, cookie: &str, password_set_ms: Option<i64>) {
        if let Some(s) = self.lock().by_cookie.get_mut(&digest(cookie)) {
            s.must_change = false;
            s.password_set_ms = password_set_ms;
        }
    }

    pub fn set_pending_import(&self, cookie: &str, pending: Option<PendingImport>) {
        let c = digest(cookie);
        let mut g = self.lock();
        if pending.is_some() {
            loop {
                let waiting: Vec<([u8; 32], i64)> = g
                    .by_cookie
                    .iter()
                    .filter(|(k, _)| **k != c)
                    .filter_map(|(k, s)| s.pending_import.as_ref().map(|p| (*k, p.checked_ms)))
                    .collect();
                if waiting.len() < PENDING_IMPORTS_MAX {
                    break;
                }
                let Some((oldest, _)) = waiting.into_iter().min_by_key(|(_, t)| *t) else {
                    break;
                };
                if let Some(s) = g.by_cookie.get_mut(&oldest) {
                    s.pending_import = None;
                }
            }
        }
        if let Some(s) = g.by_cookie.get_mut(&c) {
            s.pending_import = pending;
        }
    }

    /// Whether `name` may try a password now.
    pub fn gate(&self, name: &str, now_ms: i64) -> Gate {
        match self.lock().failures.get(name) {
            Some(f) if f.locked_until_ms > now_ms => Gate::Locked(f.locked_until_ms),
            _ => Gate::Open,
        }
    }

    /// Counts a failed sign-in for `name`; the lock's end if this one locks it.
    pub fn failed(&self, name: &str, now_ms: i64) -> Option<i64> {
        let mut g = self.lock();
        if g.failures.len() >= FAILURE_NAMES_MAX && !g.failures.contains_key(name) {
            g.failures.retain(|_, f| f.locked_until_ms > now_ms);
            if g.failures.len() >= FAILURE_NAMES_MAX {
                // Every remembered name is locked: a flood. The newcomer is not counted,
                // and the names already locked stay locked.
                return None;
            }
        }
        let f = g.failures.entry(name.to_string()).or_default();
        if f.locked_until_ms != 0 && f.locked_until_ms <= now_ms {
            // A lock that ran out: the next failures count from zero.
            *f = Failures::default();
        }
        f.count += 1;
        if f.count >= SIGN_IN_FAILURES_MAX {
            f.locked_until_ms = now_ms + LOCKOUT_MS;
            return Some(f.locked_until_ms);
        }
        None
    }

    /// A successful sign-in clears the name's failures.
    pub fn succeeded(&self, name: &str) {
        self.lock().failures.remove(name);
    }

    #[cfg(test)]
    fn create_for(&self, op: &Operator, must_change: bool, now_ms: i64) -> String {
        self.create(op, must_change, None, now_ms)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_cookie.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cardgate_domain::operator::Role;

    fn op(id: u64) -> Operator {
        Operator {
            id,
            name: format!("op{id}"),
            role: Role::CardDesk,
            token_hash: [0; 32],
            enabled: true,
            created_ms: 0,
        }
    }

    #[test]
    fn a_session_lives_while_used_and_ends_when_idle_or_too_old() {
        let s = Sessions::default();
        let cookie = s.create_for(&op(1), false, 0);
        let key = s.touch(&cookie, 1).unwrap().api_key;
        assert!(key.starts_with(SESSION_KEY_PREFIX));
        assert_eq!(s.operator_of_key(&key, 2), Some(1));
        // Used every 29 minutes, it lives on...
        let mut now = 0;
        for _ in 0..10 {
            now += SESSION_IDLE_MS - 60_000;
            assert!(s.touch(&cookie, now).is_some(), "used in time at {now}");
        }
        // ...until idle for the limit.
        now += SESSION_IDLE_MS;
        assert_eq!(s.operator_of_key(&key, now), None, "its API key dies with it");
        assert!(s.touch(&cookie, now).is_none());
        assert!(
            s.touch(&cookie, now - SESSION_IDLE_MS).is_none(),
            "ended, not just hidden"
        );

        let cookie = s.create_for(&op(1), false, 0);
        let mut now = 0;
        while now + 60_000 < SESSION_LIFETIME_MS {
            now += 20 * 60_000;
            if now < SESSION_LIFETIME_MS {
                assert!(s.touch(&cookie, now).is_some());
            }
        }
        assert!(s.touch(&cookie, SESSION_LIFETIME_MS).is_none(), "a shift at most");
    }

    #[test]
    fn sign_out_ends_the_session_and_its_api_key() {
        let s = Sessions::default();
        let cookie = s.create_for(&op(1), false, 0);
        let other = s.create_for(&op(2), false, 0);
        let key = s.touch(&cookie, 0).unwrap().api_key;
        assert!(s.end(&cookie).is_some());
        assert!(s.touch(&cookie, 1).is_none());
        assert_eq!(s.operator_of_key(&key, 1), None);
        assert!(s.touch(&other, 1).is_some(), "others stay signed in");
        assert!(s.touch("not a cookie", 1).is_none());
        assert_eq!(s.operator_of_key("cgs_guess", 1), None);
    }

    #[test]
    fn ending_an_operators_sessions_keeps_the_one_that_asked() {
        let s = Sessions::default();
        let a = s.create_for(&op(1), false, 0);
        let b = s.create_for(&op(1), false, 0);
        let c = s.create_for(&op(2), false, 0);
        let key = s.touch(&a, 0).unwrap().api_key;
        s.end_operator_except_key(1, Some(&key));
        assert!(s.touch(&a, 1).is_some());
        assert!(s.touch(&b, 1).is_none());
        assert!(s.touch(&c, 1).is_some());
        s.end_operator_except_key(1, None);
        assert!(s.touch(&a, 2).is_none(), "a reset by someone else ends them all");
        assert_eq!(s.operator_of_key(&key, 2), None);
    }

    #[test]
    fn sessions_are_bounded_and_the_longest_idle_goes_first() {
        let s = Sessions::default();
        let first = s.create_for(&op(1), false, 0);
        let mut last = String::new();
        for i in 1..=SESSIONS_MAX as i64 {
            last = s.create_for(&op(2), false, i);
        }
        assert_eq!(s.len(), SESSIONS_MAX);
        assert!(
            s.touch(&first, SESSIONS_MAX as i64 + 1).is_none(),
            "the oldest made room"
        );
        assert!(s.touch(&last, SESSIONS_MAX as i64 + 1).is_some());
    }

    #[test]
    fn five_failures_lock_a_name_for_a_while_and_success_clears_them() {
        let s = Sessions::default();
        for i in 0..SIGN_IN_FAILURES_MAX - 1 {
            assert_eq!(s.failed("wang", i64::from(i)), None);
            assert_eq!(s.gate("wang", i64::from(i)), Gate::Open);
        }
        let until = s.failed("wang", 100).expect("the fifth failure locks");
        assert_eq!(until, 100 + LOCKOUT_MS);
        assert_eq!(s.gate("wang", 101), Gate::Locked(until));
        assert_eq!(s.gate("li", 101), Gate::Open, "per name");
        assert_eq!(s.gate("wang", until), Gate::Open, "the lock ends");
        // After the lock, one failure does not lock again at once.
        assert_eq!(s.failed("wang", until + 1), None);
        assert_eq!(s.gate("wang", until + 2), Gate::Open);
        for i in 0..3 {
            s.failed("li", i);
        }
        s.succeeded("li");
        for i in 0..SIGN_IN_FAILURES_MAX - 1 {
            assert_eq!(s.failed("li", 10 + i64::from(i)), None, "counted from zero again");
        }
    }

    #[test]
    fn checked_files_waiting_are_bounded_across_sessions() {
        let s = Sessions::default();
        let cookies: Vec<String> = (0..PENDING_IMPORTS_MAX as u64 + 1)
            .map(|i| s.create_for(&op(i + 1), false, 0))
            .collect();
        for (i, c) in cookies.iter().enumerate() {
            s.set_pending_import(
                c,
                Some(PendingImport {
                    id: format!("p{i}"),
                    checked_ms: i as i64,
                    file_name: "a.csv".into(),
                    charset: None,
                    bytes: Arc::from(vec![0u8; 16]),
                }),
            );
        }
        let waiting: Vec<bool> = cookies
            .iter()
            .map(|c| s.touch(c, 1).unwrap().pending_import.is_some())
            .collect();
        assert!(!waiting[0], "the one checked longest ago made room");
        assert!(waiting[1..].iter().all(|w| *w));
        s.set_pending_import(&cookies[1], None);
        assert!(s.touch(&cookies[1], 1).unwrap().pending_import.is_none());
    }

    #[test]
    fn secrets_compare_by_content() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert_ne!(random_hex(), random_hex());
        assert_eq!(random_hex().len(), 64);
    }
}
