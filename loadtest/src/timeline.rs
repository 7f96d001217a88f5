//! Latency over time: per 100 ms of the run, how many answers, how many slow, the
//! slowest. A p99 alone cannot tell a steady tail from stalls; the slots can, and their
//! wall-clock start lines them up with what the gateway logged at the same moment.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// One slot's width.
pub const SLOT: Duration = Duration::from_millis(100);
/// Slots kept: an hour. Later answers are left out of the timeline (not of the
/// histograms), so that a long run's memory stays bounded.
pub const SLOTS_MAX: usize = 36_000;
/// An answer slower than this counts as slow in its slot.
pub const SLOW: Duration = Duration::from_millis(5);

pub(crate) struct Timeline {
    epoch: Instant,
    epoch_unix_ms: u64,
    answers: Vec<AtomicU32>,
    slow: Vec<AtomicU32>,
    max_us: Vec<AtomicU32>,
}

/// The measured window's slots, in order; `start_unix_ms` is the first slot's start.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineReport {
    pub slot_ms: u64,
    pub slow_ms: u64,
    pub start_unix_ms: u64,
    pub answers: Vec<u32>,
    pub slow: Vec<u32>,
    pub max_ms: Vec<f64>,
}

impl Timeline {
    pub(crate) fn new() -> Timeline {
        let slots = || (0..SLOTS_MAX).map(|_| AtomicU32::new(0)).collect();
        Timeline {
            epoch: Instant::now(),
            epoch_unix_ms: u64::try_from(crate::client::now_ms()).unwrap_or(0),
            answers: slots(),
            slow: slots(),
            max_us: slots(),
        }
    }

    fn slot(&self, at: Instant) -> usize {
        (at.saturating_duration_since(self.epoch).as_millis() / SLOT.as_millis()) as usize
    }

    /// An answer to a request due at `due` that took `latency_us`.
    pub(crate) fn record(&self, due: Instant, latency_us: u64) {
        let i = self.slot(due);
        if i >= SLOTS_MAX {
            return;
        }
        self.answers[i].fetch_add(1, Ordering::Relaxed);
        if latency_us > SLOW.as_micros() as u64 {
            self.slow[i].fetch_add(1, Ordering::Relaxed);
        }
        self.max_us[i].fetch_max(latency_us.min(u64::from(u32::MAX)) as u32, Ordering::Relaxed);
    }

    /// The slots from `from` up to `to`.
    pub(crate) fn report(&self, from: Instant, to: Instant) -> TimelineReport {
        let first = self.slot(from).min(SLOTS_MAX);
        let end = self.slot(to).min(SLOTS_MAX).max(first);
        let read = |v: &[AtomicU32]| {
            v[first..end]
                .iter()
                .map(|a| a.load(Ordering::Relaxed))
                .collect::<Vec<_>>()
        };
        TimelineReport {
            slot_ms: SLOT.as_millis() as u64,
            slow_ms: SLOW.as_millis() as u64,
            start_unix_ms: self.epoch_unix_ms + first as u64 * SLOT.as_millis() as u64,
            answers: read(&self.answers),
            slow: read(&self.slow),
            max_ms: read(&self.max_us)
                .into_iter()
                .map(|us| f64::from(us) / 1000.0)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_land_in_the_slot_they_were_due_in_and_slow_ones_are_counted() {
        let t = Timeline::new();
        let at = |ms: u64| t.epoch + Duration::from_millis(ms);
        t.record(at(50), 1_000);
        t.record(at(150), 7_000);
        t.record(at(160), 2_000);
        t.record(at(350), 12_500);
        let r = t.report(at(100), at(400));
        assert_eq!(r.answers, vec![2, 0, 1]);
        assert_eq!(r.slow, vec![1, 0, 1]);
        assert_eq!(r.max_ms, vec![7.0, 0.0, 12.5]);
        assert_eq!(r.start_unix_ms, t.epoch_unix_ms + 100);
    }

    #[test]
    fn answers_past_the_last_slot_are_left_out() {
        let t = Timeline::new();
        t.record(t.epoch + SLOT * (SLOTS_MAX as u32 + 5), 1_000);
        let r = t.report(t.epoch, t.epoch + SLOT * (SLOTS_MAX as u32 + 10));
        assert_eq!(r.answers.len(), SLOTS_MAX);
        assert_eq!(r.answers.iter().sum::<u32>(), 0);
    }
}
