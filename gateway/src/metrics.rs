//! The gateway's metrics: every family it exports, described once here with its type,
//! unit and help text (`FAMILIES`; docs/OPERATIONS.md says what each means and what to
//! do), the histogram buckets, the series an alert reads registered at 0 from start-up,
//! the build-info and process families, and the gauges sampled once a second.
//!
//! Metrics are recorded where things happen, through the `metrics` facade (the ledger,
//! the journal and the central flusher record their own); this module only installs the
//! recorder and says what the names mean. A name recorded anywhere in the workspace and
//! missing from `FAMILIES` fails `every_recorded_family_is_described` below.
//!
//! Labels are bounded: message kinds, results, decline reasons, error codes, terminal
//! kinds, route templates. Never a card number, an account or a terminal id.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cardgate_codec::{DeclineReason, ErrorCode, Message};
use cardgate_domain::model::TerminalKind;
use cardgate_ledger::Ledger;
use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Answer latency of terminals' requests (seconds). The gateway answers in well under
/// 10 ms; the buckets are fine there (the purchase p99 alert's 10 ms is a bucket
/// boundary, so `histogram_quantile` does not interpolate across it) and coarse above.
const REQUEST_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// One group commit and its steps (seconds): an `fdatasync` is ~0.1 to a few ms on an
/// SSD; a stall of tens of ms is what an operator must see.
const COMMIT_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Work that is allowed to take long (seconds): a checkpoint, a central store batch,
/// an operator's call (an import of a whole campus takes seconds).
const SLOW_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Submissions one group commit covered: 1 when idle, hundreds at a canteen's lunch.
const SUBMISSION_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 4096.0,
];
/// Journal entries per central store batch (up to `central.batch_entries_max`, 50,000).
const CENTRAL_BATCH_BUCKETS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0, 16000.0, 32000.0, 50000.0,
];
/// State records one checkpoint wrote (up to the 100,000-record trigger, more after a
/// long replay).
const CHECKPOINT_RECORD_BUCKETS: &[f64] = &[
    1.0, 10.0, 100.0, 1000.0, 5000.0, 10000.0, 25000.0, 50000.0, 100000.0, 250000.0, 1000000.0,
];
/// For a histogram recorded somewhere without buckets of its own: a histogram still,
/// never the exporter's default summary, whose quantiles cover a sliding window while
/// its sum and count cover the process's life (a checkpoint summary once showed a
/// largest value of 43 beside a mean of 1,691).
const FALLBACK_BUCKETS: &[f64] = &[0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0, 1000000.0];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Counter,
    Gauge,
    Histogram,
}

/// One metric family: its name (with its unit), type, unit and what it means.
pub struct Family {
    pub name: &'static str,
    pub kind: Type,
    pub unit: Unit,
    pub help: &'static str,
}

const fn family(name: &'static str, kind: Type, unit: Unit, help: &'static str) -> Family {
    Family { name, kind, unit, help }
}

use Type::{Counter as C, Gauge as G, Histogram as H};

/// Every family the gateway exports, besides `process_*` (`metrics-process`).
#[rustfmt::skip]
pub const FAMILIES: &[Family] = &[
    family("cardgate_build_info", G, Unit::Count, "Always 1; the labels name the running build (version, git commit)."),
    // ---- terminals ----
    family("cardgate_connections", G, Unit::Count, "Terminal TCP connections open now, in sign-on or signed on."),
    family("cardgate_connections_signing_on", G, Unit::Count, "Terminal connections accepted and not yet signed on."),
    family("cardgate_connections_accepted_total", C, Unit::Count, "Terminal TCP connections accepted."),
    family("cardgate_accept_errors_total", C, Unit::Count, "Failed accepts on the terminal listener, by errno kind (emfile: out of file descriptors)."),
    family("cardgate_connections_refused_total", C, Unit::Count, "Terminal connections the gateway closed with an ERROR frame, by error code (bad_mac, replay, auth_failed, idle_timeout, ...)."),
    family("cardgate_sign_ons_total", C, Unit::Count, "Terminal sign-ons by result: ok, auth_failed (wrong key or unknown terminal), disabled (a terminal the system admin stopped), timeout, overloaded, aborted (the connection ended during sign-on)."),
    family("cardgate_sessions_superseded_total", C, Unit::Count, "Sessions closed because their terminal signed on again on a new connection."),
    family("cardgate_offline_batches_total", C, Unit::Count, "Offline upload batches by status: accepted, bad_mac (nothing posted), bad_batch (nothing posted), system_error."),
    family("cardgate_offline_sales_total", C, Unit::Count, "Offline sales uploaded, by result: posted, duplicate (held already: not posted again)."),
    family("cardgate_door_checks_total", C, Unit::Count, "Online access checks decided, by result: granted, denied."),
    family("cardgate_door_denials_total", C, Unit::Count, "Online access checks denied, by reason (the wire's AccessReason names)."),
    family("cardgate_door_punches_total", C, Unit::Count, "Attendance punches, by status: recorded, duplicate, unknown_card, card_blocked."),
    family("cardgate_door_events_uploaded_total", C, Unit::Count, "Offline access events uploaded by door controllers, by result: stored, duplicate (held already: not stored again)."),
    family("cardgate_door_unexpected_messages_total", C, Unit::Count, "Messages refused because the terminal's kind may not send them (a POS terminal's access check, a door controller's purchase), by terminal kind; the connection is closed."),
    family("cardgate_door_wrong_group_total", C, Unit::Count, "Access checks naming a door on another door group than the controller's (denied wrong_group)."),
    family("cardgate_door_clock_drift_alarms_total", C, Unit::Count, "Door controllers' and attendance clocks' messages (or sign-ons) whose clock was further from the gateway's than doors.clock_drift_max_ms."),
    family("cardgate_door_cache_pushes_total", C, Unit::Count, "DOOR_CACHE_PUSH frames sent to connected door controllers after a change to their group's cache."),
    family("cardgate_door_controllers_behind", G, Unit::Count, "Door controllers whose acknowledged cache version is behind their door group's."),
    family("cardgate_terminal_sequence_gaps", G, Unit::Count, "Open gaps in terminals' transaction sequence numbers (ranges never received), all terminals."),
    family("cardgate_terminal_sequence_numbers_missing", G, Unit::Count, "Transaction sequence numbers never received below each terminal's highest, all terminals."),
    family("cardgate_sign_ons_previous_key_total", C, Unit::Count, "Sign-ons proved with a terminal's previous key, during a rekey's overlap."),
    family("cardgate_shutdown_phase", G, Unit::Count, "The shutdown phase: 0 running, 1 stop accepting, 2 drain sessions, 3 central flush, 4 committer, 5 stopped."),
    family("cardgate_admin_connections", G, Unit::Count, "Admin API connections open now (capped at limits.admin_connections_max)."),
    family("cardgate_admin_accept_errors_total", C, Unit::Count, "Admin listener accept errors (out of descriptors or memory: backed off)."),
    family("cardgate_console_sign_ins_total", C, Unit::Count, "Console sign-ins by outcome: ok, failed (wrong name or password), locked (too many failures)."),
    family("cardgate_console_csrf_refusals_total", C, Unit::Count, "Console forms refused for a missing or wrong CSRF token."),
    family("cardgate_terminals_connected", G, Unit::Count, "Terminals with a signed-on session now, by terminal kind (pos, door, attendance, kiosk)."),
    family("cardgate_terminals_offline", G, Unit::Count, "Enabled terminals without a session and not heard from for health.terminal_offline_after_s, by terminal kind."),
    family("cardgate_request_seconds", H, Unit::Seconds, "Terminal request latency in the gateway, from the frame decoded to its answer written, by message kind and result (approved, declined, error, ok; an access check granted is approved, denied declined)."),
    family("cardgate_blacklist_pushes_total", C, Unit::Count, "BLACKLIST_PUSH frames sent to terminals."),
    family("cardgate_blacklist_future_acks_total", C, Unit::Count, "Blacklist acknowledgements naming a version the gateway never issued."),
    family("cardgate_blacklist_syncs_total", C, Unit::Count, "BLACKLIST_SYNC requests answered."),
    // ---- decisions ----
    family("cardgate_decisions_total", C, Unit::Count, "Money decisions made (a retry answered from memory is not one), by kind (purchase, reversal)."),
    family("cardgate_declines_total", C, Unit::Count, "Declined money requests, by decline reason."),
    family("cardgate_retries_total", C, Unit::Count, "Money requests answered from the remembered outcome of the same sequence number."),
    family("cardgate_exceptions_raised_total", C, Unit::Count, "Exceptions raised for the desk to settle, by kind (refund_owed, and offline_* for uploaded offline sales: overdraft, card_blocked, over_limit, clock_suspect, unknown_card, closed_account)."),
    family("cardgate_audit_records_total", C, Unit::Count, "Audit records written."),
    family("cardgate_import_rows_total", C, Unit::Count, "Rows applied by CSV imports, by result (added, updated)."),
    family("cardgate_accounts", G, Unit::Count, "Accounts held in memory."),
    family("cardgate_cards", G, Unit::Count, "Cards held in memory."),
    family("cardgate_terminals", G, Unit::Count, "Registered terminals."),
    family("cardgate_blacklist_version", G, Unit::Count, "The newest blacklist version."),
    family("cardgate_blacklist_published_version", G, Unit::Count, "The newest durable blacklist version, the one terminals are told of."),
    family("cardgate_blacklist_cards", G, Unit::Count, "Cards on the blacklist."),
    family("cardgate_blacklist_terminals_connected", G, Unit::Count, "Connected terminals, as the blacklist lag counts them."),
    family("cardgate_blacklist_terminals_behind", G, Unit::Count, "Connected terminals holding an older blacklist than the published one."),
    family("cardgate_blacklist_max_versions_behind", G, Unit::Count, "Versions the furthest-behind connected terminal lacks."),
    family("cardgate_blacklist_terminals_behind_by", G, Unit::Count, "Connected terminals behind on the blacklist, by how many versions (1, 2-10, 11-100, 101+)."),
    // ---- journal ----
    family("cardgate_journal_commit_seconds", H, Unit::Seconds, "One group commit: apply to sled, flush, fdatasync."),
    family("cardgate_journal_apply_seconds", H, Unit::Seconds, "The sled apply and flush step of a group commit."),
    family("cardgate_journal_sync_seconds", H, Unit::Seconds, "The fdatasync step of a group commit."),
    family("cardgate_journal_batch_submissions", H, Unit::Count, "Submissions (decisions, operator calls) made durable by one group commit."),
    family("cardgate_journal_commits_total", C, Unit::Count, "Group commits."),
    family("cardgate_journal_entries_total", C, Unit::Count, "Journal entries committed."),
    family("cardgate_journal_failures_total", C, Unit::Count, "Journal writes that failed and poisoned the journal, by step (apply, sync)."),
    family("cardgate_journal_queued_submissions", G, Unit::Count, "Submissions waiting in the journal's queue for the committer."),
    family("cardgate_journal_durable_entry_id", G, Unit::Count, "The highest journal entry id that is durable."),
    family("cardgate_journal_poisoned", G, Unit::Count, "1 when a journal write failed: every decision is refused until restart."),
    family("cardgate_journal_size_bytes", G, Unit::Bytes, "Size of the sled journal and state on disk."),
    family("cardgate_checkpoints_total", C, Unit::Count, "Checkpoints written."),
    family("cardgate_checkpoint_failures_total", C, Unit::Count, "Checkpoints that failed (the journal is replayed from the last good one)."),
    family("cardgate_checkpoint_seconds", H, Unit::Seconds, "Time to write one checkpoint."),
    family("cardgate_checkpoint_records", H, Unit::Count, "State records written by one checkpoint."),
    family("cardgate_data_filesystem_available_bytes", G, Unit::Bytes, "Bytes available to the gateway on the data directory's filesystem."),
    family("cardgate_data_filesystem_size_bytes", G, Unit::Bytes, "Size of the data directory's filesystem."),
    // ---- central store ----
    family("cardgate_central_entries_shipped_total", C, Unit::Count, "Journal entries shipped to the central store."),
    family("cardgate_central_batches_total", C, Unit::Count, "Batches committed to the central store."),
    family("cardgate_central_batch_entries", H, Unit::Count, "Journal entries per central store batch."),
    family("cardgate_central_batch_seconds", H, Unit::Seconds, "Time to write one central store batch, from BEGIN to COMMIT."),
    family("cardgate_central_prepare_seconds", H, Unit::Seconds, "Time to read one central store batch from the journal and turn it into rows (the flusher's own work)."),
    family("cardgate_central_errors_total", C, Unit::Count, "Failed central store steps, by kind (unavailable, busy, database, timeout, refused, ...)."),
    family("cardgate_central_refused_entries_total", C, Unit::Count, "Times the central store was found to refuse an entry."),
    family("cardgate_central_pruned_entries_total", C, Unit::Count, "Shipped journal entries pruned from sled after the retention time."),
    family("cardgate_central_backlog_entries", G, Unit::Count, "Durable journal entries not yet in the central store."),
    family("cardgate_central_oldest_unshipped_seconds", G, Unit::Seconds, "Age of the oldest entry not yet in the central store (0 when none): how far the central store lags."),
    family("cardgate_central_shipped_entry_id", G, Unit::Count, "The last journal entry id the central store holds."),
    family("cardgate_central_up", G, Unit::Count, "1 while the central store answers (it took the last attempt, or refused what it was given); 0 while it cannot be reached, is locked, or does not answer in time."),
    family("cardgate_central_keeping_up", G, Unit::Count, "1 when the central store is reachable, refuses nothing and lags less than central.lag_warn_s, else 0."),
    family("cardgate_central_writer_yielding", G, Unit::Count, "1 while a SQLite central store's writer thread runs at the background CPU priority (central.yield_below_ms), 0 after it was given the normal one."),
    family("cardgate_integrity_mismatches", G, Unit::Count, "Mismatches the last integrity check found, by check (chain, checkpoint, balance, memory, central_*, day_close); 0 when clean."),
    family("cardgate_integrity_last_run_timestamp_seconds", G, Unit::Seconds, "Unix time the last integrity check started."),
    family("cardgate_integrity_last_run_ok", G, Unit::Count, "1 if the last integrity check checked everything and found nothing, else 0."),
    family("cardgate_integrity_central_unchecked", G, Unit::Count, "1 if the last integrity check could not read the central store (its half was not checked), else 0."),
    family("cardgate_integrity_runs_total", C, Unit::Count, "Integrity checks run, by result: ok, mismatch, incomplete (the central store could not be read), error."),
    family("cardgate_integrity_run_seconds", H, Unit::Seconds, "How long an integrity check took."),
    family("cardgate_backups_total", C, Unit::Count, "Backups written, by result: ok, error."),
    family("cardgate_backup_last_success_timestamp_seconds", G, Unit::Seconds, "Unix time of the last backup that completed."),
    family("cardgate_backup_last_entry_id", G, Unit::Count, "The journal entry the last backup ends at."),
    family("cardgate_backup_seconds", H, Unit::Seconds, "How long a backup took."),
    family("cardgate_day_closes_total", C, Unit::Count, "Business days closed with their chain hash."),
    family("cardgate_central_stuck_entry_id", G, Unit::Count, "The journal entry the central store refuses (0 when none): shipping waits on it."),
    // ---- operators ----
    family("cardgate_admin_http_requests_total", C, Unit::Count, "Admin API requests answered, by method, route template and status."),
    family("cardgate_admin_http_request_seconds", H, Unit::Seconds, "Admin API request latency, by method and route template."),
    family("cardgate_admin_requests_total", C, Unit::Count, "Admin API calls let through by an operator's role, by endpoint group."),
    family("cardgate_admin_auth_refusals_total", C, Unit::Count, "Admin API calls refused, by status (401 no valid token, 403 role) and endpoint group."),
    family("cardgate_admin_auth_refusals_unaudited_total", C, Unit::Count, "401 refusals beyond the audited rate, counted only."),
    family("cardgate_admin_idempotent_replays_total", C, Unit::Count, "Admin calls answered with the first answer kept under their Idempotency-Key."),
    family("cardgate_admin_mutations_total", C, Unit::Count, "State-changing admin calls, by action and status."),
];

/// Installs the global recorder, describes every family, and registers at 0 the series
/// an alert or a dashboard reads, so that a rate over them exists before the first
/// event. Call once, before anything records.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = builder()?.install_recorder()?;
    describe();
    register_at_zero();
    Ok(handle)
}

fn builder() -> anyhow::Result<PrometheusBuilder> {
    let mut b = PrometheusBuilder::new().set_buckets(FALLBACK_BUCKETS)?;
    let buckets: &[(&str, &[f64])] = &[
        ("cardgate_request_seconds", REQUEST_BUCKETS),
        ("cardgate_journal_commit_seconds", COMMIT_BUCKETS),
        ("cardgate_journal_apply_seconds", COMMIT_BUCKETS),
        ("cardgate_journal_sync_seconds", COMMIT_BUCKETS),
        ("cardgate_journal_batch_submissions", SUBMISSION_BUCKETS),
        ("cardgate_checkpoint_seconds", SLOW_BUCKETS),
        ("cardgate_integrity_run_seconds", SLOW_BUCKETS),
        ("cardgate_backup_seconds", SLOW_BUCKETS),
        ("cardgate_checkpoint_records", CHECKPOINT_RECORD_BUCKETS),
        ("cardgate_central_batch_seconds", SLOW_BUCKETS),
        ("cardgate_central_prepare_seconds", SLOW_BUCKETS),
        ("cardgate_central_batch_entries", CENTRAL_BATCH_BUCKETS),
        ("cardgate_admin_http_request_seconds", SLOW_BUCKETS),
    ];
    for (name, values) in buckets {
        b = b.set_buckets_for_metric(Matcher::Full((*name).into()), values)?;
    }
    Ok(b)
}

fn describe() {
    for f in FAMILIES {
        match f.kind {
            Type::Counter => metrics::describe_counter!(f.name, f.unit, f.help),
            Type::Gauge => metrics::describe_gauge!(f.name, f.unit, f.help),
            Type::Histogram => metrics::describe_histogram!(f.name, f.unit, f.help),
        }
    }
    process().describe();
}

/// The label values a counter may take, each registered at 0.
const SIGN_ON_RESULTS: &[&str] = &["ok", "auth_failed", "disabled", "timeout", "overloaded", "aborted"];
const ACCEPT_ERROR_KINDS: &[&str] = &["emfile", "enfile", "enobufs", "enomem", "econnaborted", "other"];
const JOURNAL_FAILURE_STEPS: &[&str] = &["apply", "sync"];
/// `CentralError::kind` and `FlushError::kind`, and the flusher's own steps.
const CENTRAL_ERROR_KINDS: &[&str] = &[
    "config",
    "unavailable",
    "busy",
    "database",
    "refused",
    "schema",
    "gap",
    "ahead",
    "diverged",
    "data",
    "timeout",
    "journal",
    "journal_gap",
    "batch",
    "task",
    "cursor_save",
    "prune",
];
const BLACKLIST_BEHIND_BUCKETS: &[&str] = &["1", "2-10", "11-100", "101+"];

fn register_at_zero() {
    metrics::gauge!(
        "cardgate_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => env!("CARDGATE_GIT_COMMIT")
    )
    .set(1.0);
    for status in cardgate_codec::OfflineStatus::ALL {
        metrics::counter!("cardgate_offline_batches_total", "status" => status.as_str()).absolute(0);
    }
    for result in ["posted", "duplicate"] {
        metrics::counter!("cardgate_offline_sales_total", "result" => result).absolute(0);
    }
    for result in ["granted", "denied"] {
        metrics::counter!("cardgate_door_checks_total", "result" => result).absolute(0);
    }
    for reason in cardgate_domain::rules::access::AccessReason::ALL {
        if reason != cardgate_domain::rules::access::AccessReason::Granted {
            metrics::counter!("cardgate_door_denials_total", "reason" => reason.as_str()).absolute(0);
        }
    }
    for status in ["recorded", "duplicate", "unknown_card", "card_blocked"] {
        metrics::counter!("cardgate_door_punches_total", "status" => status).absolute(0);
    }
    for result in ["stored", "duplicate"] {
        metrics::counter!("cardgate_door_events_uploaded_total", "result" => result).absolute(0);
    }
    for kind in TerminalKind::ALL {
        metrics::counter!("cardgate_door_unexpected_messages_total", "kind" => kind.as_str()).absolute(0);
    }
    for outcome in ["ok", "failed", "locked"] {
        metrics::counter!("cardgate_console_sign_ins_total", "outcome" => outcome).absolute(0);
    }
    for result in SIGN_ON_RESULTS {
        metrics::counter!("cardgate_sign_ons_total", "result" => *result).absolute(0);
    }
    for code in ErrorCode::ALL {
        metrics::counter!("cardgate_connections_refused_total", "code" => code.as_str()).absolute(0);
    }
    for kind in ACCEPT_ERROR_KINDS {
        metrics::counter!("cardgate_accept_errors_total", "kind" => *kind).absolute(0);
    }
    for reason in DeclineReason::ALL {
        metrics::counter!("cardgate_declines_total", "reason" => reason.as_str()).absolute(0);
    }
    for kind in cardgate_domain::model::ExceptionKind::ALL {
        metrics::counter!("cardgate_exceptions_raised_total", "kind" => kind.as_str()).absolute(0);
    }
    for kind in ["purchase", "reversal"] {
        metrics::counter!("cardgate_decisions_total", "kind" => kind).absolute(0);
    }
    for step in JOURNAL_FAILURE_STEPS {
        metrics::counter!("cardgate_journal_failures_total", "step" => *step).absolute(0);
    }
    for kind in CENTRAL_ERROR_KINDS {
        metrics::counter!("cardgate_central_errors_total", "kind" => *kind).absolute(0);
    }
    for kind in TerminalKind::ALL {
        metrics::gauge!("cardgate_terminals_connected", "kind" => kind.as_str()).set(0.0);
        metrics::gauge!("cardgate_terminals_offline", "kind" => kind.as_str()).set(0.0);
    }
    for bucket in BLACKLIST_BEHIND_BUCKETS {
        metrics::gauge!("cardgate_blacklist_terminals_behind_by", "versions" => *bucket).set(0.0);
    }
    for name in [
        "cardgate_connections_accepted_total",
        "cardgate_sessions_superseded_total",
        "cardgate_sign_ons_previous_key_total",
        "cardgate_admin_accept_errors_total",
        "cardgate_console_csrf_refusals_total",
        "cardgate_blacklist_pushes_total",
        "cardgate_blacklist_future_acks_total",
        "cardgate_retries_total",
        "cardgate_journal_commits_total",
        "cardgate_journal_entries_total",
        "cardgate_checkpoints_total",
        "cardgate_checkpoint_failures_total",
        "cardgate_central_entries_shipped_total",
        "cardgate_central_batches_total",
        "cardgate_central_refused_entries_total",
        "cardgate_central_pruned_entries_total",
        "cardgate_admin_auth_refusals_unaudited_total",
        "cardgate_door_wrong_group_total",
        "cardgate_door_clock_drift_alarms_total",
        "cardgate_door_cache_pushes_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    for name in [
        "cardgate_connections",
        "cardgate_connections_signing_on",
        "cardgate_journal_poisoned",
        "cardgate_journal_queued_submissions",
        "cardgate_central_backlog_entries",
        "cardgate_central_oldest_unshipped_seconds",
        "cardgate_central_up",
        "cardgate_central_stuck_entry_id",
        "cardgate_blacklist_terminals_behind",
        "cardgate_blacklist_max_versions_behind",
        "cardgate_door_controllers_behind",
    ] {
        metrics::gauge!(name).increment(0.0);
    }
    // Histograms without labels: a dashboard shows 0 before the first checkpoint or
    // central batch rather than nothing.
    for f in FAMILIES.iter().filter(|f| f.kind == Type::Histogram) {
        if !matches!(
            f.name,
            "cardgate_request_seconds" | "cardgate_admin_http_request_seconds"
        ) {
            let _ = metrics::histogram!(f.name);
        }
    }
}

/// The standard `process_*` families (CPU seconds, resident and virtual memory, open
/// and maximum file descriptors, threads, start time), read from /proc at each scrape.
fn process() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// The exposition: process figures read now, then everything the recorder holds.
pub fn render(handle: &PrometheusHandle) -> String {
    process().collect();
    handle.render()
}

// ---- terminal requests ------------------------------------------------------------

/// The message kinds `cardgate_request_seconds` is labelled with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    Purchase,
    Reversal,
    Balance,
    Heartbeat,
    /// From a BLACKLIST_SYNC to each page of its answer.
    BlacklistSync,
    /// From the session seeing a new durable version to its push being written.
    BlacklistPush,
    /// From an OFFLINE_BATCH to its OFFLINE_RESULT.
    OfflineUpload,
    /// ACCESS_CHECK to ACCESS_RESULT.
    AccessCheck,
    /// PUNCH to PUNCH_RESULT.
    Punch,
    /// From a DOOR_CACHE_SYNC to each frame of its run.
    DoorCacheSync,
    /// From the session seeing a new cache version to its DOOR_CACHE_PUSH.
    DoorCachePush,
    /// From a DOOR_EVENTS_BATCH to its DOOR_EVENTS_RESULT.
    DoorEventsUpload,
}

impl RequestKind {
    const ALL: [RequestKind; 12] = [
        RequestKind::Purchase,
        RequestKind::Reversal,
        RequestKind::Balance,
        RequestKind::Heartbeat,
        RequestKind::BlacklistSync,
        RequestKind::BlacklistPush,
        RequestKind::OfflineUpload,
        RequestKind::AccessCheck,
        RequestKind::Punch,
        RequestKind::DoorCacheSync,
        RequestKind::DoorCachePush,
        RequestKind::DoorEventsUpload,
    ];

    fn as_str(self) -> &'static str {
        match self {
            RequestKind::Purchase => "purchase",
            RequestKind::Reversal => "reversal",
            RequestKind::Balance => "balance",
            RequestKind::Heartbeat => "heartbeat",
            RequestKind::BlacklistSync => "blacklist_sync",
            RequestKind::BlacklistPush => "blacklist_push",
            RequestKind::OfflineUpload => "offline_upload",
            RequestKind::AccessCheck => "access_check",
            RequestKind::Punch => "punch",
            RequestKind::DoorCacheSync => "door_cache_sync",
            RequestKind::DoorCachePush => "door_cache_push",
            RequestKind::DoorEventsUpload => "door_events_upload",
        }
    }
}

const RESULTS: [&str; 4] = ["approved", "declined", "error", "ok"];

/// What an answer says, for the `result` label: a decline for a system error, and an
/// ERROR frame, are the gateway's failures, not the customer's.
fn result_of(answer: &Message) -> usize {
    match answer {
        Message::Approved(_) => 0,
        Message::Declined(d) if d.reason == DeclineReason::SystemError => 2,
        Message::Declined(_) => 1,
        Message::Error(_) => 2,
        Message::OfflineResult(r) => match r.status {
            cardgate_codec::OfflineStatus::Accepted => 3,
            cardgate_codec::OfflineStatus::SystemError => 2,
            cardgate_codec::OfflineStatus::BadMac | cardgate_codec::OfflineStatus::BadBatch => 1,
        },
        Message::AccessResult(r) if r.reason == cardgate_codec::AccessReason::SystemError => 2,
        Message::AccessResult(r) if r.granted() => 0,
        Message::AccessResult(_) => 1,
        Message::DoorEventsResult(r) => match r.status {
            cardgate_codec::DoorEventsStatus::Accepted => 3,
            cardgate_codec::DoorEventsStatus::SystemError => 2,
            cardgate_codec::DoorEventsStatus::BadMac | cardgate_codec::DoorEventsStatus::BadBatch => 1,
        },
        _ => 3,
    }
}

type RequestHistograms = [[OnceLock<metrics::Histogram>; RESULTS.len()]; RequestKind::ALL.len()];

/// The latency histogram of one kind of request and the result its answer carries.
/// Each (kind, result) handle is registered on first use and kept: building a labelled
/// key per answer cost an allocation on the hot path.
pub fn request_seconds(kind: RequestKind, answer: &Message) -> &'static metrics::Histogram {
    static HISTOGRAMS: RequestHistograms =
        [const { [const { OnceLock::new() }; RESULTS.len()] }; RequestKind::ALL.len()];
    let k = kind as usize;
    let r = result_of(answer);
    HISTOGRAMS[k][r].get_or_init(|| {
        metrics::histogram!("cardgate_request_seconds", "kind" => RequestKind::ALL[k].as_str(), "result" => RESULTS[r])
    })
}

// ---- the admin API ----------------------------------------------------------------

/// Counts and times each admin API request by method, route template (never the raw
/// path: it holds card numbers and account ids) and status. A layer on the admin
/// router, which sets the matched route before this runs.
pub async fn track_admin_http(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = method_label(req.method());
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!("cardgate_admin_http_request_seconds", "method" => method, "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("cardgate_admin_http_requests_total", "method" => method, "route" => route, "status" => status)
        .increment(1);
    response
}

/// A request's method as a label: anyone can send an invented one.
fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

// ---- sampled gauges ---------------------------------------------------------------

/// What the sampler reads.
pub struct Sampled {
    pub ledger: Arc<Ledger>,
    pub central: cardgate_central::FlusherMonitor,
    pub data_dir: PathBuf,
    /// When the ledger was opened (ms): terminals not heard from since count from then.
    pub started_ms: i64,
    pub terminal_offline_after: Duration,
}

/// Gauges that are cheaper to sample than to keep current, once a second until
/// shutdown.
pub async fn sample(s: Sampled, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        sample_once(&s);
    }
}

fn sample_once(s: &Sampled) {
    use std::sync::atomic::Ordering;
    let ledger = &s.ledger;
    let j = ledger.journal();
    metrics::gauge!("cardgate_journal_queued_submissions").set(j.queue_len() as f64);
    metrics::gauge!("cardgate_journal_durable_entry_id").set(j.stats.durable_entry_id.load(Ordering::Relaxed) as f64);
    metrics::gauge!("cardgate_journal_poisoned").set(if j.is_poisoned() { 1.0 } else { 0.0 });
    if let Ok(bytes) = ledger.db().db.size_on_disk() {
        metrics::gauge!("cardgate_journal_size_bytes").set(bytes as f64);
    }
    if let Some((available, size)) = filesystem_bytes(&s.data_dir) {
        metrics::gauge!("cardgate_data_filesystem_available_bytes").set(available as f64);
        metrics::gauge!("cardgate_data_filesystem_size_bytes").set(size as f64);
    }
    let (accounts, cards, terminals) = ledger.counts();
    metrics::gauge!("cardgate_accounts").set(accounts as f64);
    metrics::gauge!("cardgate_cards").set(cards as f64);
    metrics::gauge!("cardgate_terminals").set(terminals as f64);
    let lag = ledger.blacklist_lag();
    let (gap_ranges, missing, _) = ledger.sequence_summary();
    metrics::gauge!("cardgate_terminal_sequence_gaps").set(gap_ranges as f64);
    metrics::gauge!("cardgate_terminal_sequence_numbers_missing").set(missing as f64);
    metrics::gauge!("cardgate_blacklist_version").set(lag.version as f64);
    metrics::gauge!("cardgate_blacklist_published_version").set(lag.published as f64);
    metrics::gauge!("cardgate_blacklist_cards").set(lag.listed as f64);
    metrics::gauge!("cardgate_blacklist_terminals_connected").set(lag.connected_terminals as f64);
    metrics::gauge!("cardgate_blacklist_terminals_behind").set(lag.behind as f64);
    metrics::gauge!("cardgate_blacklist_max_versions_behind").set(lag.max_versions_behind as f64);
    for (bucket, n) in BLACKLIST_BEHIND_BUCKETS.iter().zip(lag.behind_by) {
        metrics::gauge!("cardgate_blacklist_terminals_behind_by", "versions" => *bucket).set(n as f64);
    }
    let (doors_behind, _) = ledger.door_cache_lag();
    metrics::gauge!("cardgate_door_controllers_behind").set(doors_behind as f64);
    let offline_after_ms = i64::try_from(s.terminal_offline_after.as_millis()).unwrap_or(i64::MAX);
    let presence = ledger.terminal_presence(s.started_ms, offline_after_ms);
    for (i, kind) in TerminalKind::ALL.iter().enumerate() {
        metrics::gauge!("cardgate_terminals_connected", "kind" => kind.as_str()).set(presence.connected[i] as f64);
        metrics::gauge!("cardgate_terminals_offline", "kind" => kind.as_str()).set(presence.offline[i] as f64);
    }
    s.central.record_gauges();
}

/// (bytes available to an unprivileged writer, filesystem size) of the filesystem
/// holding `dir`.
pub fn filesystem_bytes(dir: &Path) -> Option<(u64, u64)> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some((
        st.f_bavail.saturating_mul(st.f_frsize),
        st.f_blocks.saturating_mul(st.f_frsize),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(observed: bool) -> String {
        let recorder = builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            register_at_zero();
            // One observation of each histogram, as the code records them.
            for f in FAMILIES.iter().filter(|f| f.kind == Type::Histogram && observed) {
                metrics::histogram!(f.name).record(0.002);
            }
        });
        handle.render()
    }

    #[test]
    fn every_family_is_described_and_no_summary_is_exported() {
        let text = rendered(true);
        assert!(!text.contains(" summary"), "a summary slipped through:\n{text}");
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP text");
        }
        for f in FAMILIES.iter().filter(|f| f.kind == Type::Histogram) {
            assert!(
                text.contains(&format!("# TYPE {} histogram", f.name)),
                "{} is not a histogram",
                f.name
            );
        }
        assert!(text.contains("cardgate_checkpoint_records_bucket{le=\"100000\"}"));
        assert!(text.contains("cardgate_request_seconds_bucket{le=\"0.01\"}"));
    }

    #[test]
    fn alerted_series_exist_at_zero_from_start() {
        let text = rendered(false);
        for series in [
            "cardgate_sign_ons_total{result=\"auth_failed\"} 0",
            "cardgate_connections_refused_total{code=\"bad_mac\"} 0",
            "cardgate_connections_refused_total{code=\"replay\"} 0",
            "cardgate_declines_total{reason=\"system_error\"} 0",
            "cardgate_journal_poisoned 0",
            "cardgate_central_stuck_entry_id 0",
            "cardgate_central_backlog_entries 0",
            "cardgate_terminals_offline{kind=\"pos\"} 0",
            "cardgate_checkpoint_failures_total 0",
            "cardgate_checkpoint_records_count 0",
            "cardgate_central_batch_seconds_bucket{le=\"+Inf\"} 0",
        ] {
            assert!(text.lines().any(|l| l == series), "missing at start: {series}");
        }
        assert!(text.contains("cardgate_build_info{version=\""));
    }

    #[test]
    fn family_names_carry_a_unit_and_counters_end_in_total() {
        for f in FAMILIES {
            match f.kind {
                Type::Counter => assert!(f.name.ends_with("_total"), "{}", f.name),
                _ => assert!(!f.name.ends_with("_total"), "{}", f.name),
            }
            if f.unit == Unit::Seconds {
                assert!(f.name.ends_with("_seconds"), "{}", f.name);
            }
            if f.unit == Unit::Bytes {
                assert!(f.name.ends_with("_bytes"), "{}", f.name);
            }
        }
        let mut names: Vec<_> = FAMILIES.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FAMILIES.len(), "a family is listed twice");
    }

    /// Every `counter!`/`gauge!`/`histogram!` name in the workspace's sources is in
    /// `FAMILIES`, so none is exported without HELP text.
    #[test]
    fn every_recorded_family_is_described() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut missing = Vec::new();
        let mut seen = 0;
        for dir in [
            "gateway/src",
            "ledger/src",
            "ledger/journal/src",
            "ledger/central/src",
            "ledger/domain/src",
        ] {
            for file in rust_files(&root.join(dir)) {
                let text = std::fs::read_to_string(&file).unwrap();
                for kind in ["counter", "gauge", "histogram"] {
                    let call = format!("metrics::{kind}!(");
                    for (i, _) in text.match_indices(&call) {
                        let rest = text[i + call.len()..].trim_start();
                        let Some(rest) = rest.strip_prefix('"') else { continue };
                        let name = &rest[..rest.find('"').unwrap()];
                        seen += 1;
                        if !FAMILIES.iter().any(|f| f.name == name) {
                            missing.push(format!("{name} ({})", file.display()));
                        }
                    }
                }
            }
        }
        assert!(seen > 40, "the scan found only {seen} metric calls");
        assert!(missing.is_empty(), "not described in FAMILIES: {missing:?}");
    }

    fn rust_files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(rust_files(&p));
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn answers_map_to_bounded_results() {
        use cardgate_codec::{CardNo, Declined, ErrorFrame};
        let declined = |reason| {
            Message::Declined(Declined {
                tx_seq: 1,
                card: CardNo(1),
                reason,
                balance_fen: 0,
                time_ms: 0,
            })
        };
        assert_eq!(
            RESULTS[result_of(&declined(DeclineReason::InsufficientFunds))],
            "declined"
        );
        assert_eq!(RESULTS[result_of(&declined(DeclineReason::SystemError))], "error");
        let error = Message::Error(ErrorFrame {
            code: ErrorCode::ServerError,
            detail: 0,
        });
        assert_eq!(RESULTS[result_of(&error)], "error");
    }
}
