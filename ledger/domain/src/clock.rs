//! Time as the gateway sees it. Decisions take time from here, never from the terminal,
//! so a terminal with a wrong clock cannot dodge a daily limit or an expiry; tests swap
//! in a manual clock to cross midnight. Dates and times are local to the business time
//! zone, a fixed offset from UTC (UTC+8 on a Chinese campus).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const DAY_MS: i64 = 86_400_000;

pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to.
#[derive(Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(now_ms: i64) -> ManualClock {
        ManualClock(Arc::new(AtomicI64::new(now_ms)))
    }

    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }

    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The business day (days since 1970-01-01 in local time) that `ms` falls on, with local
/// time `tz_offset_minutes` ahead of UTC (UTC+8 is 480).
pub fn business_day(ms: i64, tz_offset_minutes: i32) -> i32 {
    (ms + i64::from(tz_offset_minutes) * 60_000).div_euclid(DAY_MS) as i32
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `YYYY-MM-DD` → the unix ms at which that local day starts.
pub fn parse_local_date(s: &str, tz_offset_minutes: i32) -> Option<i64> {
    let mut it = s.split('-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: u32 = it.next()?.parse().ok()?;
    let d: u32 = it.next()?.parse().ok()?;
    if it.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) || !(1970..=9999).contains(&y) {
        return None;
    }
    let days = days_from_civil(y, m, d);
    if civil_from_days(days) != (y, m, d) {
        return None;
    }
    Some(days * 86_400_000 - i64::from(tz_offset_minutes) * 60_000)
}

/// Unix ms → `YYYY-MM-DD HH:MM:SS.mmm` local time.
pub fn format_local(ms: i64, tz_offset_minutes: i32) -> String {
    let local = ms + i64::from(tz_offset_minutes) * 60_000;
    let days = local.div_euclid(86_400_000);
    let rem = local.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn business_day_turns_at_local_midnight() {
        // 2026-11-28 15:59:59.999 UTC is 23:59:59.999 in UTC+8.
        let before = 1_795_881_599_999;
        assert_eq!(business_day(before, 480) + 1, business_day(before + 1, 480));
        // In UTC the same instant is mid-afternoon, the same day as one ms later.
        assert_eq!(business_day(before, 0), business_day(before + 1, 0));
        assert_eq!(business_day(-1, 0), -1);
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(parse_local_date("2024-02-30", 480), None);
        assert_eq!(parse_local_date("2024-13-01", 480), None);
        assert_eq!(parse_local_date("x", 480), None);
        let ms = parse_local_date("2025-06-01", 480).unwrap();
        assert_eq!(format_local(ms, 480), "2025-06-01 00:00:00.000");
        assert_eq!(format_local(ms, 0), "2025-05-31 16:00:00.000");
    }
}
