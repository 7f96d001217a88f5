//! Log output: `tracing` to stderr, timestamps in the business zone with the offset
//! written out.
//!
//! The admin API shows times in the gateway's `tz_offset_minutes` (UTC+8 on a Chinese
//! campus); logs in UTC without saying so made operators match a desk call at 12:05 to a
//! log line at 04:05. So log times use the same zone, and every timestamp carries its
//! offset (`2025-06-03T12:05:00.123456+08:00`), which leaves no doubt and still sorts.

use std::io::IsTerminal;
use std::time::{SystemTime, UNIX_EPOCH};

use cardgate_domain::clock::civil_from_days;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// Formats log timestamps as RFC 3339 in a fixed offset from UTC.
#[derive(Clone, Copy, Debug)]
pub struct ZonedTime {
    pub offset_minutes: i32,
}

impl ZonedTime {
    /// `micros` since the epoch as RFC 3339 with microseconds and the offset.
    pub fn format(&self, micros: i64) -> String {
        let local = micros + i64::from(self.offset_minutes) * 60_000_000;
        let day_us = 86_400_000_000;
        let (y, m, d) = civil_from_days(local.div_euclid(day_us));
        let rem = local.rem_euclid(day_us);
        let sign = if self.offset_minutes < 0 { '-' } else { '+' };
        let off = self.offset_minutes.unsigned_abs();
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}{sign}{:02}:{:02}",
            rem / 3_600_000_000,
            rem / 60_000_000 % 60,
            rem / 1_000_000 % 60,
            rem % 1_000_000,
            off / 60,
            off % 60
        )
    }
}

impl FormatTime for ZonedTime {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        w.write_str(&self.format(micros))
    }
}

/// Installs the global subscriber: `RUST_LOG` filters (default `info`), colour only on a
/// terminal, times in `tz_offset_minutes`. Call once, after the configuration is read
/// (its zone is the configuration's) and before anything logs.
pub fn init(tz_offset_minutes: i32) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(ZonedTime {
            offset_minutes: tz_offset_minutes,
        })
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
    // Only a second call can fail, and then the first subscriber stays: nothing to do.
    drop(installed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_in_the_business_zone_with_the_offset_written() {
        // 2026-11-28 15:59:59.999999 UTC.
        let t = 1_795_881_599_999_999;
        assert_eq!(
            ZonedTime { offset_minutes: 480 }.format(t),
            "2026-11-28T23:59:59.999999+08:00"
        );
        assert_eq!(
            ZonedTime { offset_minutes: 0 }.format(t),
            "2026-11-28T15:59:59.999999+00:00"
        );
        assert_eq!(
            ZonedTime { offset_minutes: -150 }.format(t),
            "2026-11-28T13:29:59.999999-02:30"
        );
        // One microsecond later it is the next local day.
        assert_eq!(
            ZonedTime { offset_minutes: 480 }.format(t + 1),
            "2026-11-29T00:00:00.000000+08:00"
        );
    }
}
