//! The business day the tests' assertions name. The demo gateway keeps UTC+8; a test that
//! asserts "today's" report, spent-today or fee list is wrong, not the gateway, if it starts
//! before local midnight and ends after it, or dates a sale "ten minutes ago" a few minutes
//! into the day. CI runs at any hour, so such a test first makes sure the day will last.

use std::time::Duration;

use cardgate_loadtest::client::now_ms;

/// The demo gateway's business time zone (`tz_offset_minutes`), UTC+8.
pub const TZ_OFFSET_MINUTES: i32 = 480;

/// Longer than any single test takes on a loaded 2-core CI machine.
const LONGEST_TEST: Duration = Duration::from_secs(180);

const DAY_MS: i64 = 86_400_000;

/// Milliseconds since the start of the business day at `ms`.
fn into_day(ms: i64) -> i64 {
    (ms + i64::from(TZ_OFFSET_MINUTES) * 60_000).rem_euclid(DAY_MS)
}

/// The business date (YYYY-MM-DD) at unix `ms`.
pub fn local_date(ms: i64) -> String {
    cardgate_domain::clock::format_local(ms, TZ_OFFSET_MINUTES)[..10].to_string()
}

/// Returns when the current business day has at least the longest test's run left,
/// sleeping past local midnight if it has not. Call it first in a test whose assertions
/// name the day. Blocking on purpose: nothing of the test has started yet.
pub fn today_lasts_the_test() {
    let left = DAY_MS - into_day(now_ms());
    if left < LONGEST_TEST.as_millis() as i64 {
        eprintln!("waiting {left} ms for the business day to turn: the test names today");
        std::thread::sleep(Duration::from_millis(left as u64 + 1_000));
    }
}

/// A moment `back_ms` before now, or halfway back to local midnight if the day is younger
/// than that: "sold ten minutes ago" must still be today.
pub fn earlier_today(back_ms: i64) -> i64 {
    earlier_same_day(now_ms(), back_ms)
}

fn earlier_same_day(now: i64, back_ms: i64) -> i64 {
    now - back_ms.min(into_day(now) / 2)
}

#[test]
fn ten_minutes_ago_is_still_today_just_after_midnight() {
    // 2026-11-30 16:05:00 UTC is 00:05 on 2026-12-01 in UTC+8 (the CI run that found this).
    let five_past = 1_796_054_700_000;
    assert_eq!(local_date(five_past), "2026-12-01");
    let sold = earlier_same_day(five_past, 600_000);
    assert_eq!(local_date(sold), "2026-12-01");
    assert_eq!(five_past - sold, 150_000, "halfway back to midnight");
    // At noon, ten minutes ago is ten minutes ago.
    let noon = five_past + (12 * 60 - 5) * 60_000;
    assert_eq!(noon - earlier_same_day(noon, 600_000), 600_000);
}
