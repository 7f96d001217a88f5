//! How a ledger is opened: the business time zone, the checkpoint policy, the key that
//! seals terminal secrets, the offline limits. Beneath the ledger and its recovery, which
//! both read it.

use cardgate_journal::CheckpointPolicy;

use crate::keys::TerminalKey;

#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// Local time offset from UTC for the business day (UTC+8: 480).
    pub tz_offset_minutes: i32,
    pub checkpoints: CheckpointPolicy,
    /// Seals the terminals' secrets at rest (`keys.rs`). Without it terminals can be
    /// neither registered nor changed, and a data directory holding sealed keys does
    /// not open.
    pub terminal_key: Option<TerminalKey>,
    /// What POS terminals may sell while they cannot reach the gateway (told at
    /// sign-on; uploaded sales beyond them are flagged).
    pub offline: cardgate_codec::OfflineLimits,
}

/// Offline selling as a campus starts with: a meal's worth per sale, two meals a card a
/// day, a canteen window's busy hour per terminal, for a day at most.
pub const OFFLINE_LIMITS_DEFAULT: cardgate_codec::OfflineLimits = cardgate_codec::OfflineLimits {
    sale_max_fen: 50_00,
    card_day_max_fen: 100_00,
    terminal_total_max_fen: 3_000_00,
    offline_minutes_max: 24 * 60,
    sales_max: 1_000,
    batch_max: cardgate_domain::rules::offline::OFFLINE_BATCH_MAX,
};

impl Default for LedgerConfig {
    fn default() -> LedgerConfig {
        LedgerConfig {
            tz_offset_minutes: 480,
            checkpoints: CheckpointPolicy::default(),
            terminal_key: None,
            offline: OFFLINE_LIMITS_DEFAULT,
        }
    }
}
