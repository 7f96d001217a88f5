//! Door controllers' caches follow the card desk: a card issued or replaced for a person
//! a permission reaches, a person moved to another department or kind, and an import
//! move the door groups' cache versions in the same submission as the change, with the
//! lines that joined and left; a restart (checkpoint, or replay of the journal) restores
//! the versions and the delta log as they were.

mod common;

use std::collections::BTreeSet;

use cardgate_codec::CardNo;
use cardgate_domain::access::{CacheLine, HolidayRule, Subject, Window};
use cardgate_domain::entry::CardAction;
use cardgate_domain::model::AccountKind;
use cardgate_domain::operator::{Actor, Role};
use cardgate_journal::CheckpointPolicy;
use cardgate_ledger::desk::{By, NewPerson};
use cardgate_ledger::doors::{PermissionInput, ScheduleInput};
use cardgate_ledger::{Ledger, LedgerConfig, ManualClock};
use common::{Fixture, LUNCH_MS};

fn fixture(checkpoints: CheckpointPolicy) -> Fixture {
    let config = LedgerConfig {
        checkpoints,
        ..LedgerConfig::default()
    };
    Fixture::open(tempfile::tempdir().unwrap(), config, ManualClock::new(LUNCH_MS))
}

fn replay_only() -> CheckpointPolicy {
    CheckpointPolicy {
        enabled: false,
        ..CheckpointPolicy::default()
    }
}

fn actor(role: Role) -> Actor {
    Actor {
        operator_id: 7,
        name: "wang".into(),
        role,
    }
}

fn person(id: &str, department: &str) -> NewPerson {
    NewPerson {
        id: id.into(),
        name: format!("Person {id}"),
        department: department.into(),
        kind: AccountKind::Student,
    }
}

/// A schedule open all day every day.
async fn always(l: &Ledger) -> u64 {
    let windows = (1..=7)
        .map(|weekday| Window {
            weekday,
            start_min: 0,
            end_min: 1_440,
        })
        .collect();
    let input = ScheduleInput {
        id: None,
        name: "always".into(),
        windows,
        holidays: HolidayRule::Ignore,
    };
    l.set_schedule(&By::actor(&actor(Role::DoorAdmin)), input)
        .await
        .unwrap()
        .id
}

/// The door admin grants `subject` the group on the schedule, from day 0 on.
async fn grant(l: &Ledger, subject: Subject, group: u64, schedule: u64) {
    let input = PermissionInput {
        subject,
        door_group: group,
        schedule,
        valid_from_day: 0,
        valid_to_day: None,
        note: String::new(),
    };
    l.grant_permission(&By::actor(&actor(Role::DoorAdmin)), input)
        .await
        .unwrap();
}

/// (version, full, cards that joined, cards that left) from `have` to now.
fn delta(l: &Ledger, group: u64, have: u64) -> (u64, bool, BTreeSet<u64>, BTreeSet<u64>) {
    let c = l.door_cache_of_group(group, have);
    let cards = |v: &[CacheLine]| v.iter().map(|x| x.card.0).collect::<BTreeSet<_>>();
    (c.version, c.full, cards(&c.added), cards(&c.removed))
}

fn version(l: &Ledger, group: u64) -> u64 {
    l.door_cache_of_group(group, 0).version
}

fn set(cards: &[u64]) -> BTreeSet<u64> {
    cards.iter().copied().collect()
}

const C1: u64 = 6_222_000_000_001;
const C2: u64 = 6_222_000_000_002;
const C3: u64 = 6_222_000_000_003;

/// The desk's day, checked step by step; returns the two groups and every version seen.
async fn desk_day(l: &Ledger) -> (u64, u64, Vec<(u64, u64)>) {
    let desk = actor(Role::CardDesk);
    let sys = actor(Role::SystemAdmin);
    let lab = l.create_door_group(&By::actor(&sys), "Lab", "B1").await.unwrap().id;
    let dorm = l.create_door_group(&By::actor(&sys), "Dorm", "D7").await.unwrap().id;
    let sched = always(l).await;
    let (s1, _) = l.open_person(&By::actor(&desk), person("S1", "CS")).await.unwrap();
    let (s2, _) = l.open_person(&By::actor(&desk), person("S2", "Math")).await.unwrap();
    grant(l, Subject::Person(s1.account), lab, sched).await;
    grant(l, Subject::Department("Math".into()), dorm, sched).await;
    let mut seen = vec![(version(l, lab), version(l, dorm))];

    // A card issued to a person with a permission joins that group's cache, and only it.
    let (lab0, dorm0) = seen[0];
    l.issue_card_desk(&By::actor(&desk), s1.account, CardNo(C1), None, None)
        .await
        .unwrap();
    let (v, full, added, removed) = delta(l, lab, lab0);
    assert!(v > lab0, "a card issued under a person's permission moves the group");
    assert!(!full, "one card is a delta");
    assert_eq!((added, removed), (set(&[C1]), set(&[])));
    assert_eq!(
        version(l, dorm),
        dorm0,
        "a group no permission of the card's reaches stays"
    );
    seen.push((version(l, lab), version(l, dorm)));

    // A department's permission reaches a card issued to someone in it.
    let (_, dorm1) = seen[1];
    l.issue_card_desk(&By::actor(&desk), s2.account, CardNo(C2), None, None)
        .await
        .unwrap();
    let (v, full, added, removed) = delta(l, dorm, dorm1);
    assert!(v > dorm1 && !full);
    assert_eq!((added, removed), (set(&[C2]), set(&[])));
    seen.push((version(l, lab), version(l, dorm)));

    // S2 leaves Math: their card leaves the dormitory's cache. S1 joins Math: theirs
    // joins it; the lab (a person's permission) does not move.
    let (lab2, dorm2) = seen[2];
    l.update_person(&By::actor(&desk), "S2", None, Some("Physics".into()), None)
        .await
        .unwrap();
    l.update_person(&By::actor(&desk), "S1", None, Some("Math".into()), None)
        .await
        .unwrap();
    let (_, full, added, removed) = delta(l, dorm, dorm2);
    assert!(!full);
    assert_eq!((added, removed), (set(&[C1]), set(&[C2])));
    assert_eq!(
        version(l, lab),
        lab2,
        "a person's permission does not follow the department"
    );
    // A change of name alone moves nothing.
    let before = (version(l, lab), version(l, dorm));
    l.update_person(&By::actor(&desk), "S1", Some("Renamed".into()), None, None)
        .await
        .unwrap();
    assert_eq!((version(l, lab), version(l, dorm)), before);
    seen.push(before);

    // A replacement: the new number joins both of S1's groups, the old one leaves them
    // (through the blacklist).
    let (lab3, dorm3) = seen[3];
    l.replace_card(&By::actor(&desk), CardNo(C1), CardNo(C3), None)
        .await
        .unwrap();
    for (group, have) in [(lab, lab3), (dorm, dorm3)] {
        let (v, full, added, removed) = delta(l, group, have);
        assert!(v > have && !full);
        assert_eq!((added, removed), (set(&[C3]), set(&[C1])), "group {group}");
    }
    // Lost: the blacklist takes the card out, as before.
    l.card_status(&By::actor(&desk), CardNo(C3), CardAction::Lost)
        .await
        .unwrap();
    seen.push((version(l, lab), version(l, dorm)));
    (lab, dorm, seen)
}

async fn restarts_keep_the_versions(checkpoints: CheckpointPolicy) {
    let f = fixture(checkpoints);
    let (lab, dorm, seen) = desk_day(&f.ledger).await;
    let deltas = |l: &Ledger| -> Vec<_> {
        seen.iter()
            .flat_map(|(a, b)| [delta(l, lab, *a), delta(l, dorm, *b)])
            .collect()
    };
    let before = deltas(&f.ledger);
    let f = f.restart();
    assert_eq!(
        deltas(&f.ledger),
        before,
        "the versions and every delta from them survive the restart"
    );
}

#[tokio::test]
async fn desk_changes_move_door_caches_and_a_clean_restart_keeps_them() {
    restarts_keep_the_versions(CheckpointPolicy::default()).await;
}

#[tokio::test]
async fn desk_changes_move_door_caches_and_replay_rebuilds_them() {
    restarts_keep_the_versions(replay_only()).await;
}

#[tokio::test]
async fn an_import_moves_the_groups_its_departments_and_kinds_reach() {
    let f = fixture(replay_only());
    let l = &f.ledger;
    let data = actor(Role::DataAdmin);
    let sys = actor(Role::SystemAdmin);
    let math = l.create_door_group(&By::actor(&sys), "Math", "M").await.unwrap().id;
    let staff = l
        .create_door_group(&By::actor(&sys), "Staff room", "S")
        .await
        .unwrap()
        .id;
    let other = l.create_door_group(&By::actor(&sys), "Other", "O").await.unwrap().id;
    let sched = always(l).await;
    // A department's permission needs someone in it (these two hold no card).
    let desk = actor(Role::CardDesk);
    l.open_person(&By::actor(&desk), person("M0", "Math")).await.unwrap();
    l.open_person(&By::actor(&desk), person("A0", "Art")).await.unwrap();
    grant(l, Subject::Department("Math".into()), math, sched).await;
    grant(l, Subject::Kind(AccountKind::Staff), staff, sched).await;
    grant(l, Subject::Department("Art".into()), other, sched).await;
    let before = [version(l, math), version(l, staff), version(l, other)];
    let csv = "person_id,name,department,kind,card_no\n\
               T1,Zhang,Math,student,6222000000101\n\
               T2,Li,Physics,staff,6222000000102\n";
    let report = l.import_csv(&By::actor(&data), csv.as_bytes(), false).await.unwrap();
    assert!(report.applied, "{report:?}");
    let after = [version(l, math), version(l, staff), version(l, other)];
    assert!(after[0] > before[0], "a Math student's card reaches the Math group");
    assert!(after[1] > before[1], "a staff card reaches the staff room");
    assert_eq!(after[2], before[2], "nobody in Art was imported");
    let cards = |g| {
        l.door_cache_of_group(g, 0)
            .added
            .iter()
            .map(|x| x.card.0)
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(cards(math), set(&[6_222_000_000_101]));
    assert_eq!(cards(staff), set(&[6_222_000_000_102]));

    // A second import moves T2 to staff → student: the staff room moves on again.
    let csv = "person_id,name,department,kind,card_no\nT2,Li,Physics,student,6222000000102\n";
    let report = l.import_csv(&By::actor(&data), csv.as_bytes(), false).await.unwrap();
    assert!(report.applied && report.kind_changed == 1, "{report:?}");
    let moved = version(l, staff);
    assert!(moved > after[1]);
    assert_eq!(cards(staff), set(&[]));

    let f = f.restart();
    assert_eq!(version(&f.ledger, staff), moved, "replay restores the import's moves");
}

#[tokio::test]
async fn a_temporary_cards_line_ends_at_its_expiry() {
    let f = fixture(replay_only());
    let l = &f.ledger;
    let desk = actor(Role::CardDesk);
    let lab = l
        .create_door_group(&By::actor(&actor(Role::SystemAdmin)), "Lab", "B1")
        .await
        .unwrap()
        .id;
    let sched = always(l).await;
    let (s1, _) = l.open_person(&By::actor(&desk), person("S1", "CS")).await.unwrap();
    grant(l, Subject::Person(s1.account), lab, sched).await;
    let expires_min = (LUNCH_MS / 60_000) as u64 + 10 * 1_440;
    l.issue_card_desk(
        &By::actor(&desk),
        s1.account,
        CardNo(C1),
        Some(expires_min as i64 * 60_000),
        None,
    )
    .await
    .unwrap();
    let lines = l.door_cache_of_group(lab, 0).added;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        u64::from(lines[0].valid_to_min),
        expires_min,
        "an open-ended permission ends with the card"
    );
}
