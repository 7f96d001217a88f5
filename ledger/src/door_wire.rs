//! Door controllers' and attendance clocks' messages as the session receives them,
//! answered as `Pending` frames (docs/PROTOCOL.md section 11): the operations are in
//! `doors.rs`; this file turns them into and out of the wire's types.

use cardgate_codec::crypto::{DoorEventFields, verify_door_event_mac};
use cardgate_codec::{
    AccessCheck, AccessReason, AccessResult, DOOR_HOLIDAYS_FIRST, DOOR_HOLIDAYS_MAX, DOOR_PAGE_FIRST,
    DOOR_PAGE_LAST_IN_RUN, DOOR_PAGE_MORE, DOOR_SCHEDULE_FIRST, DOOR_SCHEDULE_WINDOWS_MAX, DOOR_WINDOW_HOLIDAY,
    DoorCacheBulk, DoorCacheEntry, DoorCachePageKind, DoorCacheSync, DoorEvent, DoorEventsBatch, DoorEventsResult,
    DoorEventsStatus, DoorHolidays, DoorSchedule, DoorWindow, ErrorCode, ErrorFrame, HolidayRule as WireHolidayRule,
    Message, Passback, Punch, PunchResult, PunchStatus, TerminalSecret,
};
use cardgate_domain::access::{AntiPassback, CacheLine, HolidayRule, Schedule, Window};
use cardgate_domain::model::TerminalKind;

use crate::doors::{AccessRequest, DoorCache, UploadedEvent};
use crate::ledger::Ledger;
use crate::txn::Pending;

/// Pages one sync run carries at most (like the blacklist's): bounds the frames one
/// request costs; a longer full list takes more runs.
pub const DOOR_SYNC_PAGES_MAX: usize = 32;

/// Entries one sync run of a full list carries at most, whatever the page size: a run is
/// held whole until the session writes it (20 bytes an entry in DOOR_CACHE_BULKs), so
/// this bounds what each syncing controller costs the gateway's memory (80 KB) and what
/// a controller must buffer before it may switch. 4,096 entries is eight bulk pages of
/// 512: a 20,000-entry group in five runs.
pub const DOOR_SYNC_RUN_ENTRIES_MAX: usize = 4_096;

/// The answer a session writes when the ledger cannot make a door request durable.
fn server_error() -> Message {
    Message::Error(ErrorFrame {
        code: ErrorCode::ServerError,
        detail: 0,
    })
}

fn wire_line(l: &CacheLine) -> DoorCacheEntry {
    DoorCacheEntry {
        card: l.card,
        schedule: l.schedule,
        valid_from_min: l.valid_from_min,
        valid_to_min: l.valid_to_min,
    }
}

fn wire_window(w: &Window, day: u8) -> DoorWindow {
    DoorWindow {
        day,
        start_min: w.start_min,
        // On the wire an end is 1..=1440: midnight is 1440.
        end_min: if w.end_min == 0 { 1440 } else { w.end_min },
    }
}

/// A schedule as DOOR_SCHEDULE frames (16 windows each, the first `FIRST`).
fn schedule_frames(s: &Schedule) -> Vec<Message> {
    let (rule, holiday) = match &s.holidays {
        HolidayRule::Ignore => (WireHolidayRule::Ignore, &[][..]),
        HolidayRule::Closed => (WireHolidayRule::HolidayWindows, &[][..]),
        HolidayRule::Windows(ws) => (WireHolidayRule::HolidayWindows, ws.as_slice()),
    };
    let windows: Vec<DoorWindow> = s
        .windows
        .iter()
        .map(|w| wire_window(w, w.weekday))
        .chain(holiday.iter().map(|w| wire_window(w, DOOR_WINDOW_HOLIDAY)))
        .collect();
    let mut out = Vec::new();
    let chunks: Vec<&[DoorWindow]> = if windows.is_empty() {
        vec![&[]]
    } else {
        windows.chunks(DOOR_SCHEDULE_WINDOWS_MAX).collect()
    };
    for (i, chunk) in chunks.into_iter().enumerate() {
        let mut frame = DoorSchedule {
            schedule: s.id as u32,
            flags: if i == 0 { DOOR_SCHEDULE_FIRST } else { 0 },
            holiday_rule: rule,
            count: chunk.len() as u8,
            windows: [DoorWindow::default(); DOOR_SCHEDULE_WINDOWS_MAX],
        };
        frame.windows[..chunk.len()].copy_from_slice(chunk);
        out.push(Message::DoorSchedule(frame));
    }
    out
}

fn holiday_frames(days: &[i32], tz_offset_minutes: i32) -> Vec<Message> {
    let chunks: Vec<&[i32]> = if days.is_empty() {
        vec![&[]]
    } else {
        days.chunks(DOOR_HOLIDAYS_MAX).collect()
    };
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut frame = DoorHolidays {
                flags: if i == 0 { DOOR_HOLIDAYS_FIRST } else { 0 },
                count: chunk.len() as u8,
                utc_offset_min: tz_offset_minutes as i16,
                days: [0; DOOR_HOLIDAYS_MAX],
            };
            for (slot, d) in frame.days.iter_mut().zip(chunk) {
                *slot = (*d).max(0) as u32;
            }
            Message::DoorHolidays(frame)
        })
        .collect()
}

fn passback_of(rule: AntiPassback) -> (Passback, u16) {
    match rule {
        AntiPassback::Off => (Passback::Off, 0),
        AntiPassback::Strict => (Passback::Strict, 0),
        AntiPassback::Timed { minutes } => (Passback::Timed, minutes.min(u32::from(u16::MAX)) as u16),
    }
}

/// The pages of one run: a delta (adds, then removes), or a slice of the full list after
/// `s.after`; in the kind and size `s` asked for (`DoorCacheSync::answer`).
fn pages(cache: &DoorCache, s: &DoorCacheSync) -> Vec<Message> {
    let (passback, passback_min) = passback_of(cache.anti_passback);
    let per_page = s.entries_per_page();
    let page = |kind, flags, from, added: &[DoorCacheEntry], removed: &[DoorCacheEntry]| {
        DoorCacheBulk::new(kind, flags, from, cache.version, added, removed)
            .and_then(|p| s.answer(p.with_passback(passback, passback_min)))
    };
    let mut out = Vec::new();
    if !cache.full {
        let mut items: Vec<(bool, DoorCacheEntry)> = cache.added.iter().map(|l| (true, wire_line(l))).collect();
        items.extend(cache.removed.iter().map(|l| (false, wire_line(l))));
        let chunks: Vec<&[(bool, DoorCacheEntry)]> = if items.is_empty() {
            vec![&[]]
        } else {
            items.chunks(per_page).collect()
        };
        let n = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let added: Vec<DoorCacheEntry> = chunk.iter().filter(|(a, _)| *a).map(|(_, e)| *e).collect();
            let removed: Vec<DoorCacheEntry> = chunk.iter().filter(|(a, _)| !*a).map(|(_, e)| *e).collect();
            let from = if i == 0 { s.have_version } else { cache.version };
            let flags = if i + 1 == n { DOOR_PAGE_LAST_IN_RUN } else { 0 };
            out.extend(page(DoorCachePageKind::Delta, flags, from, &added, &removed));
        }
        return out;
    }
    let start = match s.after {
        None => 0,
        Some(a) => cache.added.partition_point(|l| wire_line(l) <= a),
    };
    let rest = &cache.added[start.min(cache.added.len())..];
    let per_run = (DOOR_SYNC_PAGES_MAX * per_page).min(DOOR_SYNC_RUN_ENTRIES_MAX);
    let this_run = &rest[..rest.len().min(per_run)];
    let more = rest.len() > per_run;
    let chunks: Vec<&[CacheLine]> = if this_run.is_empty() {
        vec![&[]]
    } else {
        this_run.chunks(per_page).collect()
    };
    let n = chunks.len();
    let mut entries = Vec::with_capacity(per_page);
    for (i, chunk) in chunks.into_iter().enumerate() {
        entries.clear();
        entries.extend(chunk.iter().map(wire_line));
        let mut flags = 0;
        if i == 0 && s.after.is_none() {
            flags |= DOOR_PAGE_FIRST;
        }
        if i + 1 == n {
            flags |= DOOR_PAGE_LAST_IN_RUN;
            if more {
                flags |= DOOR_PAGE_MORE;
            }
        }
        out.extend(page(DoorCachePageKind::Full, flags, 0, &entries, &[]));
    }
    out
}

impl Ledger {
    /// The kind a terminal is registered as.
    pub fn terminal_kind(&self, terminal_id: u64) -> Option<TerminalKind> {
        self.state.terminal(terminal_id).map(|t| t.info.kind)
    }

    /// The highest event number the gateway holds for a controller or clock (its
    /// SIGN_ON_OK `last_tx_seq`).
    pub fn controller_last_event(&self, terminal_id: u64) -> u64 {
        self.state
            .access()
            .events()
            .controllers
            .get(&terminal_id)
            .map_or(0, |c| c.seen.last)
    }

    /// ACCESS_CHECK → ACCESS_RESULT, once the decision is durable (`system_error` if
    /// it cannot be).
    pub async fn access_check_frame(&self, terminal_id: u64, c: &AccessCheck) -> Pending {
        let req = AccessRequest {
            event_seq: c.event_seq,
            card: c.card,
            door: u64::from(c.door),
            direction: c.direction as u8,
            controller_time_ms: c.controller_time_ms,
        };
        let now = self.now_ms();
        let failed = AccessResult {
            event_seq: c.event_seq,
            card: c.card,
            door: c.door,
            reason: AccessReason::SystemError,
            cache_version: 0,
            gateway_time_ms: now,
        };
        match self.access_check(terminal_id, req).await {
            Ok(d) => Pending::from_durable(
                d.map(|a| {
                    Message::AccessResult(AccessResult {
                        event_seq: a.event_seq,
                        card: c.card,
                        door: c.door,
                        reason: a.reason,
                        cache_version: a.cache_version,
                        gateway_time_ms: a.gateway_time_ms,
                    })
                }),
                Message::AccessResult(failed),
            ),
            Err(_) => Pending::ready(Message::AccessResult(failed)),
        }
    }

    /// PUNCH → PUNCH_RESULT, once durable.
    pub async fn punch_frame(&self, terminal_id: u64, p: &Punch) -> Pending {
        match self.punch(terminal_id, p.event_seq, p.card, p.controller_time_ms).await {
            Ok(d) => Pending::from_durable(
                d.map(|a| {
                    Message::PunchResult(PunchResult {
                        event_seq: a.event_seq,
                        card: p.card,
                        status: PunchStatus::from_code(a.status).unwrap_or(PunchStatus::Duplicate),
                        gateway_time_ms: a.gateway_time_ms,
                    })
                }),
                server_error(),
            ),
            Err(_) => Pending::ready(server_error()),
        }
    }

    /// DOOR_CACHE_SYNC → a run: schedules and the calendar (unless it continues a full
    /// list), then the pages. The first frame waits for a barrier.
    pub async fn door_cache_sync_frames(&self, terminal_id: u64, s: &DoorCacheSync) -> Vec<Pending> {
        let durable = match self
            .door_cache(terminal_id, if s.after.is_some() { 0 } else { s.have_version })
            .await
        {
            Ok(d) => d,
            Err(_) => return vec![Pending::ready(server_error())],
        };
        let tz = self.tz_offset_minutes();
        let s = *s;
        let frames = durable.map(move |cache| {
            let mut frames = Vec::new();
            if s.after.is_none() {
                for sch in &cache.schedules {
                    frames.extend(schedule_frames(sch));
                }
                frames.extend(holiday_frames(&cache.holidays.days, tz));
            }
            frames.extend(pages(&cache, &s));
            frames
        });
        Pending::run(frames, server_error())
    }

    /// DOOR_CACHE_ACK: the version a controller holds; one above any issued is not
    /// believed and shows it holding none.
    pub fn door_cache_ack_frame(&self, terminal_id: u64, version: u64) {
        let current = match self.controller_group(terminal_id) {
            0 => 0,
            g => self.door_cache_of_group_version(g),
        };
        self.door_cache_ack(terminal_id, if version > current { 0 } else { version });
    }

    fn door_cache_of_group_version(&self, group: u64) -> u64 {
        crate::doors::cache_version(self.group_access(group).cache_version, self.blacklist().version())
    }

    /// DOOR_EVENTS_BATCH and its DOOR_EVENTs → DOOR_EVENTS_RESULT: refused whole on a
    /// bad MAC or a broken batch, else every event stored once.
    pub async fn door_events_frame(&self, terminal_id: u64, batch: &DoorEventsBatch, events: &[DoorEvent]) -> Pending {
        let mut result = DoorEventsResult {
            first_event_seq: batch.first_event_seq,
            count: batch.count,
            status: DoorEventsStatus::Accepted,
            stored: 0,
            duplicates: 0,
            flagged: 0,
            first_bad_seq: 0,
            last_event_seq: self.controller_last_event(terminal_id),
        };
        let well_formed = !events.is_empty()
            && events.len() == usize::from(batch.count)
            && events[0].event_seq == batch.first_event_seq
            && events.iter().all(|e| e.event_seq != 0)
            && events.windows(2).all(|w| w[0].event_seq < w[1].event_seq);
        if !well_formed {
            result.status = DoorEventsStatus::BadBatch;
            return Pending::ready(Message::DoorEventsResult(result));
        }
        let secrets: Vec<TerminalSecret> = match self.sign_on_secrets(terminal_id) {
            Some(s) => std::iter::once(s.current).chain(s.previous).collect(),
            None => Vec::new(),
        };
        if let Some(bad) = events.iter().find(|e| {
            let f = DoorEventFields::of(terminal_id, e);
            !secrets.iter().any(|k| verify_door_event_mac(k, &f, &e.mac))
        }) {
            result.status = DoorEventsStatus::BadMac;
            result.first_bad_seq = bad.event_seq;
            return Pending::ready(Message::DoorEventsResult(result));
        }
        let uploaded: Vec<UploadedEvent> = events
            .iter()
            .map(|e| UploadedEvent {
                event_seq: e.event_seq,
                card: e.card,
                door: u64::from(e.door),
                direction: e.direction as u8,
                granted: e.granted(),
                reason: e.reason.code(),
                event_time_ms: e.event_time_ms,
            })
            .collect();
        let failed = DoorEventsResult {
            status: DoorEventsStatus::SystemError,
            ..result
        };
        match self.door_events_upload(terminal_id, &uploaded).await {
            Ok(d) => Pending::from_durable(
                d.map(move |u| {
                    Message::DoorEventsResult(DoorEventsResult {
                        stored: u.stored,
                        duplicates: u.duplicates,
                        flagged: u.flagged,
                        last_event_seq: u.last_event_seq,
                        ..result
                    })
                }),
                Message::DoorEventsResult(failed),
            ),
            Err(_) => Pending::ready(Message::DoorEventsResult(failed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cardgate_codec::CardNo;
    use cardgate_domain::access::Holidays;

    use super::*;

    fn full_list(lines: usize) -> DoorCache {
        let added: Vec<CacheLine> = (1..=lines as u64)
            .map(|i| CacheLine {
                card: CardNo(1_000_000_000 + i),
                schedule: 1,
                valid_from_min: 0,
                valid_to_min: u32::MAX,
            })
            .collect();
        DoorCache {
            group: 1,
            version: 7,
            full: true,
            added: Arc::new(added),
            removed: Vec::new(),
            anti_passback: AntiPassback::Off,
            schedules: Vec::new(),
            holidays: Holidays::default(),
        }
    }

    /// The entries of a run and whether it ends with `MORE`.
    fn run(
        cache: &DoorCache,
        after: Option<DoorCacheEntry>,
        page_entries_max: u16,
    ) -> (Vec<DoorCacheEntry>, usize, bool) {
        let frames = pages(
            cache,
            &DoorCacheSync {
                have_version: 0,
                after,
                page_entries_max,
            },
        );
        let mut entries = Vec::new();
        let mut more = false;
        for (i, m) in frames.iter().enumerate() {
            let flags = m.door_page_flags().expect("pages only");
            assert_eq!(flags & DOOR_PAGE_LAST_IN_RUN != 0, i + 1 == frames.len());
            more = flags & DOOR_PAGE_MORE != 0;
            match m {
                Message::DoorCacheBulk(p) => entries.extend(p.added_entries()),
                Message::DoorCachePage(p) => entries.extend(p.added_entries()),
                other => panic!("{other:?}"),
            }
        }
        (entries, frames.len(), more)
    }

    #[test]
    fn a_full_list_comes_in_runs_of_at_most_32_pages_and_4096_entries() {
        let cache = full_list(10_000);
        for (asked, per_page, per_run) in [
            (0u16, 4usize, 128usize),
            (1, 1, 32),
            (100, 100, 3_200),
            (512, 512, 4_096),
            (u16::MAX, 512, 4_096),
        ] {
            let mut got = Vec::new();
            let mut after = None;
            let mut runs = 0;
            loop {
                let (entries, frames, more) = run(&cache, after, asked);
                assert!(
                    entries.len() <= per_run,
                    "asked {asked}: {} entries in a run",
                    entries.len()
                );
                assert!(frames <= DOOR_SYNC_PAGES_MAX);
                assert_eq!(frames, entries.len().div_ceil(per_page), "asked {asked}");
                runs += 1;
                after = entries.last().copied();
                got.extend(entries);
                if !more {
                    break;
                }
            }
            assert_eq!(runs, 10_000usize.div_ceil(per_run), "asked {asked}");
            let want: Vec<DoorCacheEntry> = cache.added.iter().map(wire_line).collect();
            assert_eq!(got, want, "asked {asked}: every entry once, in order");
        }
    }
}
