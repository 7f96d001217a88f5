//! The log: `tracing` to stderr, as text or JSON lines, each stamped in RFC 3339 with
//! the business time zone's offset (`2026-11-28T12:05:00.123456+08:00`), so that a line
//! reads in the campus's local time and still names the instant exactly.
//!
//! What is logged where (the rules every module follows): nothing per transaction at
//! info or above (a lunch peak is thousands a second; they are counted on /metrics and
//! kept in the journal); what anyone on the network can cause is debug and counted; a
//! card number only through `CardNo`'s `Display`, which prints its last four digits
//! (`****0001`).

use std::io::IsTerminal;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

use crate::config::LogFormat;

/// Installs the global subscriber: `RUST_LOG` filters (default `info`), colour only on a
/// terminal. Call once, after the configuration is read (its zone and format are the
/// configuration's) and before anything logs; a second call leaves the first in place.
pub fn init(format: LogFormat, tz_offset_minutes: i32) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let timer = BusinessTime { tz_offset_minutes };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(timer)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().with_current_span(false).with_span_list(false).try_init(),
    };
    // Only a second call can fail, and then the first subscriber stays: nothing to do.
    drop(installed);
}

/// `+08:00` for 480 minutes.
pub fn utc_offset(tz_offset_minutes: i32) -> String {
    let sign = if tz_offset_minutes < 0 { '-' } else { '+' };
    let m = tz_offset_minutes.unsigned_abs();
    format!("{sign}{:02}:{:02}", m / 60, m % 60)
}

/// RFC 3339 with microseconds, in the business time zone.
pub fn rfc3339(unix_micros: i64, tz_offset_minutes: i32) -> String {
    let local = unix_micros + i64::from(tz_offset_minutes) * 60_000_000;
    let days = local.div_euclid(86_400_000_000);
    let rem = local.rem_euclid(86_400_000_000);
    let (y, mo, d) = cardgate_domain::clock::civil_from_days(days);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:06}{}",
        rem / 3_600_000_000,
        rem / 60_000_000 % 60,
        rem / 1_000_000 % 60,
        rem % 1_000_000,
        utc_offset(tz_offset_minutes)
    )
}

struct BusinessTime {
    tz_offset_minutes: i32,
}

impl FormatTime for BusinessTime {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        w.write_str(&rfc3339(micros, self.tz_offset_minutes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_carry_the_business_offset() {
        // 2026-11-28 08:05:00.123456 UTC.
        let t = 1_795_853_100_123_456;
        assert_eq!(rfc3339(t, 480), "2026-11-28T16:05:00.123456+08:00");
        assert_eq!(rfc3339(t, 0), "2026-11-28T08:05:00.123456+00:00");
        assert_eq!(rfc3339(t, -330), "2026-11-28T02:35:00.123456-05:30");
        assert_eq!(rfc3339(t, -600), "2026-11-27T22:05:00.123456-10:00");
        assert_eq!(utc_offset(345), "+05:45");
        // 2026-11-28 15:59:59.999999 UTC; one microsecond later it is the next local day.
        let t = 1_795_881_599_999_999;
        assert_eq!(rfc3339(t, 480), "2026-11-28T23:59:59.999999+08:00");
        assert_eq!(rfc3339(t + 1, 480), "2026-11-29T00:00:00.000000+08:00");
        assert_eq!(rfc3339(t, -150), "2026-11-28T13:29:59.999999-02:30");
    }
}
