//! Time as the ledger sees it. Decisions take time from here, never from the terminal,
//! so a terminal with a wrong clock cannot dodge a daily limit or an expiry; tests swap
//! in a manual clock to cross midnight.

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
}
