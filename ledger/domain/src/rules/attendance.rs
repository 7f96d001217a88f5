//! The attendance rule: one person's local business day from their punches, against the
//! working hours the configuration gives: the first punch is the arrival, the last the
//! departure (a single punch is an arrival without a departure); late past the grace
//! minutes, early before the end, absent on a working day without a punch. Holidays
//! and days off are not working days. Today is judged only as far as it has gone: nobody
//! is absent before the grace has passed, and nobody has left early (or failed to punch
//! out) before the end of the working hours.

use serde::Serialize;

use crate::rules::access::{local_day_minute, weekday};

/// Working hours: from `start_min` to `end_min` local time on the weekdays marked in
/// `workdays` (0 = Monday).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkHours {
    pub start_min: u16,
    pub end_min: u16,
    pub late_grace_min: u16,
    pub workdays: [bool; 7],
}

impl Default for WorkHours {
    /// 08:00–17:00, Monday to Friday, five minutes' grace.
    fn default() -> WorkHours {
        WorkHours {
            start_min: 8 * 60,
            end_min: 17 * 60,
            late_grace_min: 5,
            workdays: [true, true, true, true, true, false, false],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DayStatus {
    /// Arrived in time and left at or after the end.
    Present,
    Late,
    /// Left before the end (or punched only once).
    EarlyLeave,
    LateAndEarlyLeave,
    /// A working day without a punch (today: none by the end of the grace).
    Absent,
    /// A working day that has not come yet, or today before the grace has passed
    /// without a punch: nobody can be absent from it yet.
    NotYet,
    /// Not a working day (a weekend, a holiday); punches are still listed.
    DayOff,
}

impl DayStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DayStatus::Present => "present",
            DayStatus::Late => "late",
            DayStatus::EarlyLeave => "early_leave",
            DayStatus::LateAndEarlyLeave => "late_and_early_leave",
            DayStatus::Absent => "absent",
            DayStatus::NotYet => "not_yet",
            DayStatus::DayOff => "day_off",
        }
    }
}

/// One person's day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaySheet {
    pub first_in_ms: Option<i64>,
    pub last_out_ms: Option<i64>,
    pub punches: usize,
    pub late_min: u32,
    pub early_min: u32,
    pub status: DayStatus,
}

/// The sheet of local day `day` from the punches (unix ms, any order) made on it, as
/// seen at `now_ms`: a working day after today is `NotYet`, never absent; today without
/// a punch is `NotYet` until the grace after the start has passed; and today's early
/// leave (a last punch before the end, or a single punch) is judged only once the end
/// has passed, since a lunchtime punch or an arrival is not a departure yet.
pub fn day_sheet(
    day: i32,
    now_ms: i64,
    punches_ms: &[i64],
    hours: &WorkHours,
    holiday: bool,
    tz_offset_minutes: i32,
) -> DaySheet {
    let (today, now_min) = local_day_minute(now_ms, tz_offset_minutes);
    // Where the day stands: a past day is over, a future one not begun.
    let grace_passed = day < today || (day == today && now_min > hours.start_min + hours.late_grace_min);
    let ended = day < today || (day == today && now_min >= hours.end_min);
    let first = punches_ms.iter().copied().min();
    let last = if punches_ms.len() > 1 {
        punches_ms.iter().copied().max()
    } else {
        None
    };
    let working = hours.workdays[usize::from(weekday(day))] && !holiday;
    let minute = |ms: i64| local_day_minute(ms, tz_offset_minutes).1;
    let late_min = match first {
        Some(f) if working && minute(f) > hours.start_min + hours.late_grace_min => {
            u32::from(minute(f) - hours.start_min)
        }
        _ => 0,
    };
    let early_min = match (first, last) {
        (Some(_), Some(l)) if working && ended && minute(l) < hours.end_min => u32::from(hours.end_min - minute(l)),
        _ => 0,
    };
    let no_departure = working && ended && first.is_some() && last.is_none();
    let status = if !working {
        DayStatus::DayOff
    } else if first.is_none() && !grace_passed {
        DayStatus::NotYet
    } else if first.is_none() {
        DayStatus::Absent
    } else {
        match (late_min > 0, early_min > 0 || no_departure) {
            (false, false) => DayStatus::Present,
            (true, false) => DayStatus::Late,
            (false, true) => DayStatus::EarlyLeave,
            (true, true) => DayStatus::LateAndEarlyLeave,
        }
    };
    DaySheet {
        first_in_ms: first,
        last_out_ms: last,
        punches: punches_ms.len(),
        late_min,
        early_min,
        status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::days_from_civil;

    const TZ: i32 = 480;

    fn at(day: i32, hh: i64, mm: i64) -> i64 {
        i64::from(day) * 86_400_000 + (hh * 60 + mm - i64::from(TZ)) * 60_000
    }

    #[test]
    fn a_working_day_from_its_punches() {
        let day = days_from_civil(2026, 3, 10) as i32; // a Tuesday
        let h = WorkHours::default();
        // Seen the next morning: the day is over.
        let later = at(day + 1, 9, 0);
        let s = day_sheet(
            day,
            later,
            &[at(day, 17, 30), at(day, 7, 55), at(day, 12, 0)],
            &h,
            false,
            TZ,
        );
        assert_eq!(s.status, DayStatus::Present);
        assert_eq!(s.first_in_ms, Some(at(day, 7, 55)));
        assert_eq!(s.last_out_ms, Some(at(day, 17, 30)));
        assert_eq!(s.punches, 3);

        let s = day_sheet(day, later, &[at(day, 8, 20), at(day, 16, 0)], &h, false, TZ);
        assert_eq!(s.status, DayStatus::LateAndEarlyLeave);
        assert_eq!((s.late_min, s.early_min), (20, 60));
        assert_eq!(
            day_sheet(day, later, &[at(day, 8, 5), at(day, 17, 0)], &h, false, TZ).status,
            DayStatus::Present,
            "within the grace"
        );
        assert_eq!(day_sheet(day, later, &[], &h, false, TZ).status, DayStatus::Absent);
        // Seen the day before, the same day is not absent but still to come.
        assert_eq!(
            day_sheet(day, at(day - 1, 12, 0), &[], &h, false, TZ).status,
            DayStatus::NotYet
        );
        assert_eq!(day_sheet(day, later, &[], &h, true, TZ).status, DayStatus::DayOff);
        assert_eq!(
            day_sheet(day, later, &[at(day, 7, 0)], &h, false, TZ).status,
            DayStatus::EarlyLeave,
            "no departure"
        );
        let saturday = day + 4;
        assert_eq!(
            day_sheet(saturday, at(saturday, 12, 0), &[], &h, false, TZ).status,
            DayStatus::DayOff
        );
    }

    #[test]
    fn today_is_judged_as_far_as_it_has_gone() {
        let day = days_from_civil(2026, 3, 10) as i32; // a Tuesday, 08:00-17:00, 5 minutes' grace
        let h = WorkHours::default();
        let sheet = |now: i64, punches: &[i64]| day_sheet(day, now, punches, &h, false, TZ);
        // Nobody is absent before the grace has passed; at 08:06 without a punch, they are.
        assert_eq!(sheet(at(day, 5, 44), &[]).status, DayStatus::NotYet);
        assert_eq!(sheet(at(day, 8, 5), &[]).status, DayStatus::NotYet);
        assert_eq!(sheet(at(day, 8, 6), &[]).status, DayStatus::Absent);
        // An arrival is not a departure until the end has passed.
        assert_eq!(sheet(at(day, 10, 0), &[at(day, 7, 50)]).status, DayStatus::Present);
        assert_eq!(sheet(at(day, 10, 0), &[at(day, 8, 30)]).status, DayStatus::Late);
        assert_eq!(sheet(at(day, 16, 59), &[at(day, 7, 50)]).status, DayStatus::Present);
        assert_eq!(sheet(at(day, 17, 0), &[at(day, 7, 50)]).status, DayStatus::EarlyLeave);
        // A lunchtime punch is not an early leave while the day goes on; at the end it is
        // the last punch, and it was early.
        let lunch = [at(day, 7, 50), at(day, 12, 0)];
        let s = sheet(at(day, 13, 0), &lunch);
        assert_eq!((s.status, s.early_min), (DayStatus::Present, 0));
        let s = sheet(at(day, 17, 0), &lunch);
        assert_eq!((s.status, s.early_min), (DayStatus::EarlyLeave, 300));
        assert_eq!(
            sheet(at(day, 17, 0), &[at(day, 7, 50), at(day, 17, 0)]).status,
            DayStatus::Present
        );
    }
}
