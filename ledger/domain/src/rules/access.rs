//! The door access rules: what an access check decides, and what the door admin's input
//! must look like. The ledger finds the records (door, card, account, person, the
//! permissions on the door's group, schedules, the calendar, anti-passback state), calls
//! `decide`, journals the event and answers.
//!
//! Check order, first failure wins: the door (unknown, disabled, not on the asking
//! controller's group) → the card (unknown, its status, expired) → the account → the
//! permissions (none for this person, not yet valid / expired) → the holiday calendar →
//! the weekly windows → anti-passback.

use std::collections::BTreeSet;

use crate::Refusal;
use crate::access::{
    AntiPassback, Door, DoorDirection, HolidayRule, Holidays, MINUTES_PER_DAY, Passage, PassbackState, Permission,
    Schedule, Subject, Window,
};
use crate::clock::business_day;
use crate::model::{Account, AccountStatus, Card, CardStatus, Person};
use crate::rules::input::{NAME_BYTES_MAX, check_text};

pub use cardgate_codec::AccessReason;

/// Windows one schedule may hold: several per day for every day of the week.
pub const WINDOWS_MAX: usize = 64;
/// Dates the holiday calendar may hold: ten years of public holidays and breaks.
pub const HOLIDAYS_MAX: usize = 2048;
/// The longest timed anti-passback: a day.
pub const PASSBACK_MINUTES_MAX: u32 = 1440;

const DAY_MS: i64 = 86_400_000;

/// The local weekday (0 = Monday) of a business day (1970-01-01 was a Thursday).
pub fn weekday(day: i32) -> u8 {
    (i64::from(day) + 3).rem_euclid(7) as u8
}

/// Local day and minute of `ms`.
pub fn local_day_minute(ms: i64, tz_offset_minutes: i32) -> (i32, u16) {
    let day = business_day(ms, tz_offset_minutes);
    let local = ms + i64::from(tz_offset_minutes) * 60_000;
    let minute = (local.rem_euclid(DAY_MS) / 60_000) as u16;
    (day, minute)
}

/// Unix ms at which local day `day` begins.
pub fn day_start_ms(day: i32, tz_offset_minutes: i32) -> i64 {
    i64::from(day) * DAY_MS - i64::from(tz_offset_minutes) * 60_000
}

/// Whether a permission is in force at `now_ms`: `Ok`, or the reason it is not.
pub fn validity(p: &Permission, now_ms: i64, tz_offset_minutes: i32) -> Result<(), AccessReason> {
    if now_ms < day_start_ms(p.valid_from_day, tz_offset_minutes) {
        return Err(AccessReason::NotYetValid);
    }
    // The to-date includes its whole local day.
    if let Some(to) = p.valid_to_day
        && now_ms >= day_start_ms(to + 1, tz_offset_minutes)
    {
        return Err(AccessReason::PermissionExpired);
    }
    Ok(())
}

fn covers(w: &Window, minute_of_day: u16, yesterday: bool) -> bool {
    if yesterday {
        // Only the part of yesterday's window past midnight reaches today.
        w.crosses_midnight() && minute_of_day < w.end_min
    } else if w.crosses_midnight() {
        minute_of_day >= w.start_min
    } else {
        minute_of_day >= w.start_min && minute_of_day < w.end_min
    }
}

/// The windows in force on local day `day` under `schedule`, and whether the holiday
/// calendar changed them.
fn windows_of<'a>(schedule: &'a Schedule, holidays: &Holidays, day: i32) -> (Vec<&'a Window>, bool) {
    let regular = || {
        let wd = weekday(day);
        schedule.windows.iter().filter(|w| w.weekday == wd).collect::<Vec<_>>()
    };
    if !holidays.contains(day) {
        return (regular(), false);
    }
    match &schedule.holidays {
        HolidayRule::Ignore => (regular(), false),
        HolidayRule::Closed => (Vec::new(), true),
        HolidayRule::Windows(ws) => (ws.iter().collect(), true),
    }
}

/// Whether `schedule` admits local minute `minute` of local day `day`: `Ok`, or
/// `Holiday` (the calendar closed what the weekday's windows would have opened, or its
/// holiday windows do not cover this minute) or `OutsideWindow`. A window that crosses
/// midnight belongs to the day it starts on, holiday or not.
pub fn schedule_admits(schedule: &Schedule, holidays: &Holidays, day: i32, minute: u16) -> Result<(), AccessReason> {
    let (today, today_holiday) = windows_of(schedule, holidays, day);
    let (yday, yday_holiday) = windows_of(schedule, holidays, day - 1);
    let open = today.iter().any(|w| covers(w, minute, false)) || yday.iter().any(|w| covers(w, minute, true));
    if open {
        return Ok(());
    }
    if today_holiday || yday_holiday {
        let wd = weekday(day);
        let ywd = weekday(day - 1);
        let regular_today = schedule
            .windows
            .iter()
            .any(|w| w.weekday == wd && covers(w, minute, false));
        let regular_yday = schedule
            .windows
            .iter()
            .any(|w| w.weekday == ywd && covers(w, minute, true));
        if (today_holiday
            && (regular_today || matches!(schedule.holidays, HolidayRule::Closed | HolidayRule::Windows(_))))
            || (yday_holiday && regular_yday)
        {
            return Err(AccessReason::Holiday);
        }
    }
    Err(AccessReason::OutsideWindow)
}

/// Whether `subject` names this person.
pub fn subject_matches(subject: &Subject, account: &Account, person: Option<&Person>) -> bool {
    match subject {
        Subject::Person(a) => *a == account.id,
        Subject::Department(d) => person.is_some_and(|p| p.department == *d),
        Subject::Kind(k) => *k == account.kind,
    }
}

/// Everything an access check is decided on.
pub struct AccessCheck<'a> {
    pub now_ms: i64,
    pub tz_offset_minutes: i32,
    /// The door group of the controller that asks (0: do not check, an offline event's
    /// door was checked when it was uploaded).
    pub controller_group: u64,
    pub door: Option<&'a Door>,
    pub direction: Passage,
    pub card: Option<&'a Card>,
    pub account: Option<&'a Account>,
    pub person: Option<&'a Person>,
    /// The permissions on the door's group (any subject; revoked ones are skipped).
    pub permissions: &'a [Permission],
    pub schedule: &'a dyn Fn(u64) -> Option<&'a Schedule>,
    pub holidays: &'a Holidays,
    pub anti_passback: AntiPassback,
    pub passback: Option<PassbackState>,
}

/// What an access check decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessVerdict {
    pub reason: AccessReason,
    /// The permission that granted it (0 for none).
    pub permission: u64,
    /// The anti-passback state to keep after a grant, when the group keeps one.
    pub passback: Option<PassbackState>,
}

impl AccessVerdict {
    fn deny(reason: AccessReason) -> AccessVerdict {
        AccessVerdict {
            reason,
            permission: 0,
            passback: None,
        }
    }

    pub fn granted(&self) -> bool {
        self.reason == AccessReason::Granted
    }
}

/// Why this card cannot open a door, or `None` when it can.
pub fn card_refusal(card: &Card, now_ms: i64) -> Option<AccessReason> {
    let status = match card.status {
        CardStatus::Active => None,
        CardStatus::Lost => Some(AccessReason::CardLost),
        CardStatus::Frozen => Some(AccessReason::CardFrozen),
        CardStatus::Cancelled => Some(AccessReason::CardCancelled),
        CardStatus::Replaced => Some(AccessReason::CardReplaced),
        CardStatus::Bad => Some(AccessReason::CardBad),
    };
    status.or(match card.expires_ms {
        Some(exp) if now_ms >= exp => Some(AccessReason::CardExpired),
        _ => None,
    })
}

/// The passage a check is for: the door's own direction, or the controller's word on a
/// door that is passed both ways.
pub fn passage_at(door: &Door, asked: Passage) -> Passage {
    match door.direction {
        DoorDirection::In => Passage::In,
        DoorDirection::Out => Passage::Out,
        DoorDirection::Both => asked,
    }
}

/// Anti-passback: `Ok` with the state to keep, or `AntiPassback`.
pub fn passback(
    rule: AntiPassback,
    state: Option<PassbackState>,
    account: u64,
    group: u64,
    passage: Passage,
    now_ms: i64,
) -> Result<Option<PassbackState>, AccessReason> {
    let refused = match (rule, state) {
        (AntiPassback::Off, _) => return Ok(None),
        // No passage seen yet: let them through (who slipped in before the rule began).
        (_, None) => false,
        (AntiPassback::Strict, Some(s)) => s.inside == (passage == Passage::In),
        // As strict, but the same direction again is allowed once `minutes` passed.
        (AntiPassback::Timed { minutes }, Some(s)) => {
            s.inside == (passage == Passage::In) && now_ms < s.last_ms.saturating_add(i64::from(minutes) * 60_000)
        }
    };
    if refused {
        return Err(AccessReason::AntiPassback);
    }
    Ok(Some(PassbackState {
        account,
        group,
        inside: passage == Passage::In,
        last_ms: now_ms,
    }))
}

/// The access decision, in the order the module's head gives.
pub fn decide(c: &AccessCheck<'_>) -> AccessVerdict {
    let Some(door) = c.door else {
        return AccessVerdict::deny(AccessReason::UnknownDoor);
    };
    if !door.enabled {
        return AccessVerdict::deny(AccessReason::DoorDisabled);
    }
    if c.controller_group != 0 && door.group != c.controller_group {
        return AccessVerdict::deny(AccessReason::WrongGroup);
    }
    let Some(card) = c.card else {
        return AccessVerdict::deny(AccessReason::UnknownCard);
    };
    if let Some(r) = card_refusal(card, c.now_ms) {
        return AccessVerdict::deny(r);
    }
    let Some(account) = c.account else {
        return AccessVerdict::deny(AccessReason::AccountBlocked);
    };
    if account.status != AccountStatus::Active {
        return AccessVerdict::deny(AccessReason::AccountBlocked);
    }
    let (day, minute) = local_day_minute(c.now_ms, c.tz_offset_minutes);
    // The permission that got furthest decides the reason: validity, then the
    // calendar and the windows.
    let mut best: Option<(u8, AccessReason)> = None;
    for p in c
        .permissions
        .iter()
        .filter(|p| !p.revoked && p.door_group == door.group)
    {
        if !subject_matches(&p.subject, account, c.person) {
            continue;
        }
        let result = validity(p, c.now_ms, c.tz_offset_minutes)
            .map_err(|r| (1, r))
            .and_then(|()| match (c.schedule)(p.schedule) {
                None => Err((2, AccessReason::OutsideWindow)),
                Some(s) => schedule_admits(s, c.holidays, day, minute).map_err(|r| (2, r)),
            });
        match result {
            Ok(()) => {
                let passage = passage_at(door, c.direction);
                return match passback(c.anti_passback, c.passback, account.id, door.group, passage, c.now_ms) {
                    Ok(state) => AccessVerdict {
                        reason: AccessReason::Granted,
                        permission: p.id,
                        passback: state,
                    },
                    Err(r) => AccessVerdict {
                        reason: r,
                        permission: p.id,
                        passback: None,
                    },
                };
            }
            Err((rank, r)) => {
                if best.is_none_or(|(b, _)| rank > b) {
                    best = Some((rank, r));
                }
            }
        }
    }
    AccessVerdict::deny(best.map_or(AccessReason::NoPermission, |(_, r)| r))
}

// ---- the door admin's input ---------------------------------------------------------

/// A window as the admin writes it: an end at or before the start must say `overnight`,
/// so that 18:00–08:00 typed for 08:00–18:00 is refused rather than silently opening
/// the night.
pub fn window(weekday: u8, start_min: u16, end_min: u16, overnight: bool) -> Result<Window, Refusal> {
    if weekday > 6 {
        return Err(Refusal(format!("weekday {weekday}: 0 (Monday) to 6 (Sunday)")));
    }
    if start_min >= MINUTES_PER_DAY || end_min > MINUTES_PER_DAY {
        return Err(Refusal(format!(
            "window {start_min}..{end_min}: minutes are 0..1440 (00:00 to 24:00)"
        )));
    }
    // An end of 24:00 is midnight, kept as 0: such a window ends after it starts and
    // needs no `overnight` (22:00–24:00 is the evening, 00:00–24:00 the whole day).
    let ends_at_midnight = end_min == MINUTES_PER_DAY || (start_min == 0 && end_min == 0);
    let end_min = if end_min == MINUTES_PER_DAY { 0 } else { end_min };
    let w = Window {
        weekday,
        start_min,
        end_min,
    };
    if w.crosses_midnight() && !overnight && !ends_at_midnight {
        return Err(Refusal(format!(
            "window {} ends at or before it starts: inverted (say overnight for a window past midnight)",
            fmt_window(&w)
        )));
    }
    if overnight && !w.crosses_midnight() {
        return Err(Refusal(format!(
            "window {} is marked overnight but ends after it starts",
            fmt_window(&w)
        )));
    }
    Ok(w)
}

pub fn fmt_window(w: &Window) -> String {
    format!(
        "{:02}:{:02}-{:02}:{:02}",
        w.start_min / 60,
        w.start_min % 60,
        w.end_min / 60,
        w.end_min % 60
    )
}

/// A week's windows: at most `WINDOWS_MAX`, none overlapping another (counting the part
/// of an overnight window that runs into the next day).
pub fn check_windows(windows: &[Window]) -> Result<(), Refusal> {
    if windows.len() > WINDOWS_MAX {
        return Err(Refusal(format!("at most {WINDOWS_MAX} windows in a schedule")));
    }
    const WEEK: u32 = 7 * MINUTES_PER_DAY as u32;
    // Each window as a span of the week's minutes, split where it wraps past Sunday.
    let mut spans: Vec<(u32, u32, usize)> = Vec::new();
    for (i, w) in windows.iter().enumerate() {
        let start = u32::from(w.weekday) * u32::from(MINUTES_PER_DAY) + u32::from(w.start_min);
        let end = start + w.len_min();
        if end > WEEK {
            spans.push((start, WEEK, i));
            spans.push((0, end - WEEK, i));
        } else {
            spans.push((start, end, i));
        }
    }
    spans.sort();
    for pair in spans.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b.0 < a.1 && a.2 != b.2 {
            let (wa, wb) = (&windows[a.2], &windows[b.2]);
            // Weekdays as the operator sends them: 1 (Monday) to 7 (Sunday).
            return Err(Refusal(format!(
                "windows overlap: weekday {} {} and weekday {} {}",
                wa.weekday + 1,
                fmt_window(wa),
                wb.weekday + 1,
                fmt_window(wb)
            )));
        }
    }
    Ok(())
}

/// A schedule's name, windows and holiday rule.
pub fn check_schedule(name: &str, windows: &[Window], holidays: &HolidayRule) -> Result<(), Refusal> {
    check_text("name", name, NAME_BYTES_MAX, true)?;
    check_windows(windows)?;
    if let HolidayRule::Windows(ws) = holidays {
        // Holiday windows apply to any holiday: compare them as one day's.
        let same_day: Vec<Window> = ws.iter().map(|w| Window { weekday: 0, ..*w }).collect();
        check_windows(&same_day).map_err(|r| Refusal(format!("holiday {}", r.0)))?;
        // And as two holidays in a row (a holiday weekend), as the weekly windows are
        // compared with the next day's: a night window runs into the next holiday's.
        for a in ws
            .iter()
            .filter(|w| w.len_min() > u32::from(MINUTES_PER_DAY - w.start_min))
        {
            let spill_end = a.end_min;
            if let Some(b) = ws.iter().find(|b| b.start_min < spill_end) {
                return Err(Refusal(format!(
                    "holiday windows overlap on consecutive holidays: {} runs into the next holiday's {}",
                    fmt_window(a),
                    fmt_window(b)
                )));
            }
        }
    }
    Ok(())
}

/// The calendar: at most `HOLIDAYS_MAX` dates, returned sorted without repeats.
pub fn check_holidays(days: &[i32]) -> Result<Vec<i32>, Refusal> {
    let set: BTreeSet<i32> = days.iter().copied().collect();
    if set.len() > HOLIDAYS_MAX {
        return Err(Refusal(format!("at most {HOLIDAYS_MAX} holidays")));
    }
    Ok(set.into_iter().collect())
}

/// A permission's validity: the to-date on or after the from-date.
pub fn check_validity(from_day: i32, to_day: Option<i32>) -> Result<(), Refusal> {
    if let Some(to) = to_day
        && to < from_day
    {
        return Err(Refusal("valid_to is before valid_from".into()));
    }
    Ok(())
}

/// A door's name, place and settings.
pub fn check_door(name: &str, place: &str) -> Result<(), Refusal> {
    check_text("name", name, NAME_BYTES_MAX, true)?;
    check_text("place", place, NAME_BYTES_MAX, false)?;
    Ok(())
}

pub fn check_anti_passback(rule: AntiPassback) -> Result<(), Refusal> {
    if let AntiPassback::Timed { minutes } = rule
        && (minutes == 0 || minutes > PASSBACK_MINUTES_MAX)
    {
        return Err(Refusal(format!(
            "anti-passback minutes must be 1..={PASSBACK_MINUTES_MAX}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::days_from_civil;
    use crate::model::AccountKind;
    use cardgate_codec::CardNo;
    use rust_decimal::Decimal;

    const TZ: i32 = 480;

    /// Unix ms of a local date and time (UTC+8).
    fn at(y: i64, m: u32, d: u32, hh: i64, mm: i64) -> i64 {
        days_from_civil(y, m, d) * DAY_MS + (hh * 60 + mm - i64::from(TZ)) * 60_000
    }

    fn day(y: i64, m: u32, d: u32) -> i32 {
        days_from_civil(y, m, d) as i32
    }

    fn door() -> Door {
        Door {
            id: 1,
            name: "Lab east".into(),
            place: "B2".into(),
            group: 7,
            controller: 100_001,
            direction: DoorDirection::Both,
            enabled: true,
            updated_ms: 0,
        }
    }

    fn card() -> Card {
        Card {
            no: CardNo(5),
            account: 3,
            status: CardStatus::Active,
            expires_ms: None,
            issued_ms: 0,
        }
    }

    fn account() -> Account {
        Account {
            id: 3,
            kind: AccountKind::Staff,
            status: AccountStatus::Active,
            balance: Decimal::ZERO,
            limits: None,
            day: 0,
            spent_today: Decimal::ZERO,
        }
    }

    fn person() -> Person {
        Person {
            account: 3,
            id: "S3".into(),
            name: "Li".into(),
            department: "Physics".into(),
            created_ms: 0,
        }
    }

    /// Night guard: every day 22:00–06:00, closed on holidays.
    fn night() -> Schedule {
        Schedule {
            id: 1,
            name: "night".into(),
            windows: (0..7)
                .map(|d| Window {
                    weekday: d,
                    start_min: 22 * 60,
                    end_min: 6 * 60,
                })
                .collect(),
            holidays: HolidayRule::Closed,
            updated_ms: 0,
        }
    }

    fn permission(subject: Subject) -> Permission {
        Permission {
            id: 11,
            subject,
            door_group: 7,
            schedule: 1,
            valid_from_day: day(2026, 3, 1),
            valid_to_day: Some(day(2026, 3, 31)),
            revoked: false,
            note: String::new(),
            updated_ms: 0,
        }
    }

    struct World {
        door: Option<Door>,
        card: Option<Card>,
        account: Option<Account>,
        permissions: Vec<Permission>,
        schedule: Schedule,
        holidays: Holidays,
        anti_passback: AntiPassback,
        passback: Option<PassbackState>,
        controller_group: u64,
    }

    impl World {
        fn new() -> World {
            World {
                door: Some(door()),
                card: Some(card()),
                account: Some(account()),
                permissions: vec![permission(Subject::Person(3))],
                schedule: night(),
                holidays: Holidays::default(),
                anti_passback: AntiPassback::Off,
                passback: None,
                controller_group: 7,
            }
        }

        fn check(&self, now_ms: i64, direction: Passage) -> AccessVerdict {
            let p = person();
            let s = &self.schedule;
            let lookup = move |id: u64| (id == s.id).then_some(s);
            decide(&AccessCheck {
                now_ms,
                tz_offset_minutes: TZ,
                controller_group: self.controller_group,
                door: self.door.as_ref(),
                direction,
                card: self.card.as_ref(),
                account: self.account.as_ref(),
                person: Some(&p),
                permissions: &self.permissions,
                schedule: &lookup,
                holidays: &self.holidays,
                anti_passback: self.anti_passback,
                passback: self.passback,
            })
        }

        fn reason(&self, now_ms: i64) -> AccessReason {
            self.check(now_ms, Passage::In).reason
        }
    }

    #[test]
    fn weekdays_count_from_monday() {
        assert_eq!(weekday(0), 3, "1970-01-01 was a Thursday");
        assert_eq!(weekday(day(2026, 3, 2)), 0, "2026-03-02 is a Monday");
        assert_eq!(weekday(day(2026, 3, 8)), 6);
    }

    #[test]
    fn a_window_across_midnight_admits_2359_and_0001() {
        let w = World::new();
        assert_eq!(w.reason(at(2026, 3, 10, 23, 59)), AccessReason::Granted);
        assert_eq!(w.reason(at(2026, 3, 11, 0, 1)), AccessReason::Granted);
        assert_eq!(w.reason(at(2026, 3, 11, 5, 59)), AccessReason::Granted);
        assert_eq!(w.reason(at(2026, 3, 11, 6, 0)), AccessReason::OutsideWindow);
        assert_eq!(w.reason(at(2026, 3, 11, 21, 59)), AccessReason::OutsideWindow);
        assert_eq!(w.reason(at(2026, 3, 11, 22, 0)), AccessReason::Granted);
    }

    #[test]
    fn only_monday_night_reaches_into_tuesday_morning() {
        let mut w = World::new();
        w.schedule.windows = vec![Window {
            weekday: 0,
            start_min: 22 * 60,
            end_min: 6 * 60,
        }];
        // 2026-03-09 is a Monday.
        assert_eq!(w.reason(at(2026, 3, 9, 23, 59)), AccessReason::Granted);
        assert_eq!(w.reason(at(2026, 3, 10, 0, 1)), AccessReason::Granted);
        assert_eq!(w.reason(at(2026, 3, 10, 23, 59)), AccessReason::OutsideWindow);
        assert_eq!(w.reason(at(2026, 3, 9, 0, 1)), AccessReason::OutsideWindow);
    }

    #[test]
    fn the_to_date_includes_its_whole_local_day() {
        let mut w = World::new();
        w.schedule.windows = (0..7)
            .map(|d| Window {
                weekday: d,
                start_min: 0,
                end_min: 0,
            })
            .collect();
        assert_eq!(w.reason(at(2026, 3, 31, 23, 59)), AccessReason::Granted);
        assert_eq!(w.reason(at(2026, 4, 1, 0, 0)), AccessReason::PermissionExpired);
        assert_eq!(w.reason(at(2026, 4, 1, 0, 1)), AccessReason::PermissionExpired);
        assert_eq!(w.reason(at(2026, 2, 28, 23, 59)), AccessReason::NotYetValid);
        assert_eq!(w.reason(at(2026, 3, 1, 0, 0)), AccessReason::Granted);
    }

    #[test]
    fn a_holiday_closes_or_swaps_the_windows() {
        let mut w = World::new();
        w.holidays = Holidays {
            days: vec![day(2026, 3, 10)],
        };
        assert_eq!(w.reason(at(2026, 3, 10, 23, 0)), AccessReason::Holiday);
        // The night that began on the holiday stays closed past midnight.
        assert_eq!(w.reason(at(2026, 3, 11, 0, 1)), AccessReason::Holiday);
        // The night before the holiday runs into it as it began.
        assert_eq!(w.reason(at(2026, 3, 10, 0, 1)), AccessReason::Granted);
        assert_eq!(w.reason(at(2026, 3, 11, 23, 0)), AccessReason::Granted);

        w.schedule.holidays = HolidayRule::Windows(vec![Window {
            weekday: 0,
            start_min: 9 * 60,
            end_min: 12 * 60,
        }]);
        assert_eq!(w.reason(at(2026, 3, 10, 10, 0)), AccessReason::Granted);
        assert_eq!(w.reason(at(2026, 3, 10, 23, 0)), AccessReason::Holiday);
        w.schedule.holidays = HolidayRule::Ignore;
        assert_eq!(w.reason(at(2026, 3, 10, 23, 0)), AccessReason::Granted);
    }

    #[test]
    fn every_reason_in_the_check_order() {
        let now = at(2026, 3, 10, 23, 0);
        let mut w = World::new();
        assert_eq!(w.reason(now), AccessReason::Granted);
        assert_eq!(w.check(now, Passage::In).permission, 11);

        w.controller_group = 8;
        assert_eq!(w.reason(now), AccessReason::WrongGroup);
        w.controller_group = 7;

        w.door.as_mut().unwrap().enabled = false;
        assert_eq!(w.reason(now), AccessReason::DoorDisabled);
        w.door = None;
        assert_eq!(w.reason(now), AccessReason::UnknownDoor);
        w.door = Some(door());

        for (status, reason) in [
            (CardStatus::Lost, AccessReason::CardLost),
            (CardStatus::Frozen, AccessReason::CardFrozen),
            (CardStatus::Cancelled, AccessReason::CardCancelled),
            (CardStatus::Replaced, AccessReason::CardReplaced),
            (CardStatus::Bad, AccessReason::CardBad),
        ] {
            w.card.as_mut().unwrap().status = status;
            assert_eq!(w.reason(now), reason);
        }
        w.card = Some(card());
        w.card.as_mut().unwrap().expires_ms = Some(now);
        assert_eq!(w.reason(now), AccessReason::CardExpired);
        w.card = None;
        assert_eq!(w.reason(now), AccessReason::UnknownCard);
        w.card = Some(card());

        w.account.as_mut().unwrap().status = AccountStatus::Frozen;
        assert_eq!(w.reason(now), AccessReason::AccountBlocked);
        w.account = Some(account());

        w.permissions[0].revoked = true;
        assert_eq!(w.reason(now), AccessReason::NoPermission);
        w.permissions = vec![permission(Subject::Person(4))];
        assert_eq!(w.reason(now), AccessReason::NoPermission);
        w.permissions = vec![permission(Subject::Department("Physics".into()))];
        assert_eq!(w.reason(now), AccessReason::Granted);
        w.permissions = vec![permission(Subject::Kind(AccountKind::Student))];
        assert_eq!(w.reason(now), AccessReason::NoPermission);
        w.permissions = vec![permission(Subject::Kind(AccountKind::Staff))];
        assert_eq!(w.reason(now), AccessReason::Granted);
        assert_eq!(w.reason(at(2026, 3, 10, 12, 0)), AccessReason::OutsideWindow);
    }

    #[test]
    fn the_permission_that_got_furthest_names_the_reason() {
        let mut w = World::new();
        let mut expired = permission(Subject::Person(3));
        expired.id = 12;
        expired.valid_to_day = Some(day(2026, 3, 1));
        w.permissions.push(expired);
        // The March permission is valid but outside its window; the other expired.
        assert_eq!(w.reason(at(2026, 3, 10, 12, 0)), AccessReason::OutsideWindow);
        w.permissions.remove(0);
        assert_eq!(w.reason(at(2026, 3, 10, 12, 0)), AccessReason::PermissionExpired);
    }

    #[test]
    fn strict_anti_passback_needs_an_exit_between_entries() {
        let mut w = World::new();
        w.anti_passback = AntiPassback::Strict;
        let now = at(2026, 3, 10, 23, 0);
        let v = w.check(now, Passage::In);
        assert!(v.granted());
        w.passback = v.passback;
        assert_eq!(w.check(now + 60_000, Passage::In).reason, AccessReason::AntiPassback);
        let out = w.check(now + 120_000, Passage::Out);
        assert!(out.granted());
        w.passback = out.passback;
        assert_eq!(w.check(now + 180_000, Passage::Out).reason, AccessReason::AntiPassback);
        assert!(w.check(now + 180_000, Passage::In).granted());
    }

    #[test]
    fn timed_anti_passback_forgets_an_entry_after_its_minutes() {
        let mut w = World::new();
        w.anti_passback = AntiPassback::Timed { minutes: 10 };
        let now = at(2026, 3, 10, 23, 0);
        w.passback = w.check(now, Passage::In).passback;
        assert_eq!(
            w.check(now + 9 * 60_000, Passage::In).reason,
            AccessReason::AntiPassback
        );
        assert!(w.check(now + 10 * 60_000, Passage::In).granted());
    }

    #[test]
    fn a_door_with_one_direction_overrides_the_controller() {
        let mut d = door();
        d.direction = DoorDirection::Out;
        assert_eq!(passage_at(&d, Passage::In), Passage::Out);
    }

    #[test]
    fn windows_are_checked() {
        assert!(window(0, 22 * 60, 6 * 60, true).is_ok());
        assert!(window(0, 18 * 60, 8 * 60, false).is_err(), "inverted");
        assert!(window(0, 8 * 60, 18 * 60, true).is_err(), "not overnight");
        assert!(window(0, 9 * 60, 9 * 60, false).is_err(), "empty");
        assert!(window(0, 0, 1440, false).is_ok(), "the whole day");
        assert!(window(7, 0, 60, false).is_err());
        assert!(window(0, 1440, 60, false).is_err());
        // Ending at 24:00 is ending after the start: no `overnight` needed.
        assert!(window(0, 22 * 60, 1440, false).is_ok(), "the evening");

        let w = |d, s, e| Window {
            weekday: d,
            start_min: s,
            end_min: e,
        };
        assert!(check_windows(&[w(0, 480, 720), w(0, 780, 1080)]).is_ok());
        assert!(check_windows(&[w(0, 480, 720), w(0, 700, 1080)]).is_err());
        // Monday night runs into Tuesday morning.
        assert!(check_windows(&[w(0, 1320, 360), w(1, 300, 600)]).is_err());
        assert!(check_windows(&[w(0, 1320, 360), w(1, 360, 600)]).is_ok());
        // Sunday night runs into Monday morning.
        assert!(check_windows(&[w(6, 1320, 360), w(0, 0, 60)]).is_err());
        // Named as the operator sent them: Sunday night into Monday morning is 7 and 1.
        let refusal = check_windows(&[w(6, 1320, 360), w(0, 300, 420)]).unwrap_err().0;
        assert!(
            refusal.contains("weekday 7 22:00") && refusal.contains("weekday 1 05:00"),
            "{refusal}"
        );
        let all_week: Vec<Window> = (0..7).map(|d| w(d, 0, 0)).collect();
        assert!(check_windows(&all_week).is_ok());

        assert!(check_validity(10, Some(9)).is_err());
        assert!(check_validity(10, Some(10)).is_ok());
        assert!(check_anti_passback(AntiPassback::Timed { minutes: 0 }).is_err());
    }

    #[test]
    fn holiday_windows_are_checked_across_consecutive_holidays() {
        let w = |s, e| Window {
            weekday: 0,
            start_min: s,
            end_min: e,
        };
        let rule = |ws: Vec<Window>| check_schedule("s", &[], &HolidayRule::Windows(ws));
        // 22:00–06:00 runs into the next holiday's 05:00–07:00.
        let e = rule(vec![w(1320, 360), w(300, 420)]).unwrap_err();
        assert!(e.0.contains("22:00-06:00") && e.0.contains("05:00-07:00"), "{}", e.0);
        // Touching is allowed, as it is for weekly windows.
        assert!(rule(vec![w(1320, 360), w(360, 420)]).is_ok());
        // A window that ends at midnight runs into nothing.
        assert!(rule(vec![w(1320, 0), w(0, 60)]).is_ok());
        assert!(rule(vec![w(0, 0)]).is_ok(), "the whole day");
    }
}
