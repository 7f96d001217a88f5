//! A terminal that loses the gateway mid-run, as `docs/PROTOCOL.md` section 8.6 has it
//! behave: it sells offline within the OFFLINE_LIMITS it was told at sign-on, each sale
//! under the next sequence number of the one counter it shares with online requests,
//! then reconnects and uploads what it holds, oldest first, in batches of at most
//! `batch_max`, each answered before the next, retrying a batch that got `system_error`
//! or lost its connection until the gateway holds it.
//!
//! Also here: the sequence counter itself, which can skip a number on purpose every so
//! often (`--skip-every`), so that the gateway's completeness report has known gaps to
//! find; the skipped numbers follow from the counter's start and its count alone.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use cardgate_codec::{CardNo, OfflineLimits, OfflineResult, OfflineSale, OfflineStatus};
use rand::RngExt;
use rand::rngs::StdRng;
use serde::Serialize;

use crate::client::ClientError;

/// The most sales one batch may carry, whatever a gateway announces (PROTOCOL.md 6.18).
pub const BATCH_MAX: u16 = 64;

/// Random cards tried for one offline sale before the terminal decides its per-card
/// limits leave nothing to sell: with limits of a few meals a card and thousands of
/// cards, a handful of draws finds one unless the terminal is near its own limits.
pub const CARD_TRIES_MAX: u32 = 16;

/// A terminal's transaction sequence numbers: one counter for online and offline
/// (PROTOCOL.md 8.1), which skips one number after every `skip_every` it hands out
/// (never, with 0). A skip is taken only as part of handing out the next number, so a
/// skipped number is always followed by a used one: the gateway sees every skip as a
/// gap.
#[derive(Clone, Copy, Debug)]
pub struct SeqCounter {
    start: u64,
    last: u64,
    used: u64,
    skip_every: u64,
}

impl SeqCounter {
    /// A counter continuing after `start` (SIGN_ON_OK's `last_tx_seq`).
    pub fn new(start: u64, skip_every: u64) -> SeqCounter {
        SeqCounter {
            start,
            last: start,
            used: 0,
            skip_every,
        }
    }

    /// The number `take` hands out next.
    pub fn peek(&self) -> u64 {
        if self.skip_every > 0 && self.used > 0 && self.used.is_multiple_of(self.skip_every) {
            self.last + 2
        } else {
            self.last + 1
        }
    }

    pub fn take(&mut self) -> u64 {
        self.last = self.peek();
        self.used += 1;
        self.last
    }

    /// Numbers handed out.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// The last number handed out (`start` if none).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The first number handed out, if any.
    pub fn first(&self) -> Option<u64> {
        (self.used > 0).then_some(self.start + 1)
    }

    /// The numbers skipped so far, as inclusive ranges (each one number: a skip is always
    /// followed by a use). After every `skip_every` uses one is skipped, so they are
    /// `start + j * (skip_every + 1)` for j = 1, 2, ... below the last number used.
    pub fn skipped(&self) -> Vec<(u64, u64)> {
        if self.skip_every == 0 {
            return Vec::new();
        }
        let step = self.skip_every + 1;
        let mut out = Vec::with_capacity(self.skipped_count() as usize);
        let mut s = self.start + step;
        while s < self.last {
            out.push((s, s));
            s += step;
        }
        out
    }

    /// How many numbers were skipped: every number after `start` up to the last was
    /// either used or skipped.
    pub fn skipped_count(&self) -> u64 {
        self.last - self.start - self.used
    }
}

/// Whether terminal `index` (0-based) is one of the `pct` percent that go offline: the
/// first `ceil(terminals * pct / 100)` spread evenly over the fleet.
pub fn goes_offline(index: u64, pct: u8) -> bool {
    let pct = u128::from(pct.min(100));
    let upto = |n: u64| (u128::from(n) * pct).div_ceil(100);
    upto(index + 1) > upto(index)
}

/// What an offline terminal still may sell: OFFLINE_LIMITS against what it holds. Every
/// sale of one offline period is on one local day (the period lasts moments), so the
/// per-card daily limit is counted over the period.
#[derive(Debug)]
pub struct OfflineBudget {
    limits: OfflineLimits,
    held: u32,
    held_fen: i64,
    card_fen: HashMap<CardNo, i64>,
}

impl OfflineBudget {
    pub fn new(limits: OfflineLimits) -> OfflineBudget {
        OfflineBudget {
            limits,
            held: 0,
            held_fen: 0,
            card_fen: HashMap::new(),
        }
    }

    /// Whether the terminal may sell at all (all limits 0 or no time: it must not).
    pub fn open(&self) -> bool {
        self.limits.offline_minutes_max > 0 && u32::from(self.limits.sales_max) > self.held
    }

    /// Whether a sale of `amount_fen` with `card` is within every limit.
    pub fn fits(&self, card: CardNo, amount_fen: i64) -> bool {
        let l = &self.limits;
        self.open()
            && amount_fen > 0
            && amount_fen <= l.sale_max_fen
            && self.held_fen.saturating_add(amount_fen) <= l.terminal_total_max_fen
            && self
                .card_fen
                .get(&card)
                .copied()
                .unwrap_or(0)
                .saturating_add(amount_fen)
                <= l.card_day_max_fen
    }

    pub fn record(&mut self, card: CardNo, amount_fen: i64) {
        self.held += 1;
        self.held_fen += amount_fen;
        *self.card_fen.entry(card).or_default() += amount_fen;
    }

    /// The largest single sale the limits allow.
    pub fn sale_max_fen(&self) -> i64 {
        self.limits.sale_max_fen
    }
}

/// One sale to make offline within `budget`: an amount in `amount_min_fen..=amount_max_fen`
/// (capped by the per-sale limit) and a card from `pick_card` that still has room.
/// `None` when the limits leave nothing to sell.
pub fn next_sale(
    budget: &OfflineBudget,
    rng: &mut StdRng,
    amount_min_fen: i64,
    amount_max_fen: i64,
    mut pick_card: impl FnMut(&mut StdRng) -> Option<CardNo>,
) -> Option<(CardNo, i64)> {
    let top = amount_max_fen.min(budget.sale_max_fen());
    if !budget.open() || top < amount_min_fen {
        return None;
    }
    let amount = rng.random_range(amount_min_fen..=top);
    (0..CARD_TRIES_MAX).find_map(|_| pick_card(rng).filter(|c| budget.fits(*c, amount)).map(|c| (c, amount)))
}

/// Upload batches by how they ended, one count per attempt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BatchCounts {
    pub accepted: u64,
    pub bad_mac: u64,
    pub bad_batch: u64,
    pub system_error: u64,
    /// The connection broke, or no OFFLINE_RESULT came in time: the outcome is unknown
    /// and the batch is sent again on a new connection.
    pub cut_off: u64,
    /// Reconnecting to resend failed.
    pub reconnect_failed: u64,
}

impl BatchCounts {
    pub fn merge(&mut self, o: &BatchCounts) {
        self.accepted += o.accepted;
        self.bad_mac += o.bad_mac;
        self.bad_batch += o.bad_batch;
        self.system_error += o.system_error;
        self.cut_off += o.cut_off;
        self.reconnect_failed += o.reconnect_failed;
    }
}

/// What uploading came to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UploadTally {
    /// OFFLINE_RESULT's counts over accepted batches.
    pub posted: u64,
    pub duplicates: u64,
    pub flagged: u64,
    /// Sales in accepted batches: the gateway holds each, posted once.
    pub held: u64,
    pub held_fen: i128,
    /// Sales given up on that were certainly not posted (refused, or never sent).
    pub not_uploaded: u64,
    /// Sales given up on after an attempt whose outcome is unknown: they may be posted.
    pub unsure: u64,
    /// Accepted results whose counts do not cover the batch (`posted + duplicates` is
    /// not its count, or they name another batch).
    pub mismatched: u64,
    pub batches: BatchCounts,
}

impl UploadTally {
    pub fn merge(&mut self, o: &UploadTally) {
        self.posted += o.posted;
        self.duplicates += o.duplicates;
        self.flagged += o.flagged;
        self.held += o.held;
        self.held_fen += o.held_fen;
        self.not_uploaded += o.not_uploaded;
        self.unsure += o.unsure;
        self.mismatched += o.mismatched;
        self.batches.merge(&o.batches);
    }
}

/// How a terminal retries: at most `attempts_max` tries per batch (and per reconnect),
/// waiting a random time in [limit/2, limit] between them, the limit doubling from
/// `backoff_first` up to `backoff_max`, so that a fleet does not come back in one burst.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub attempts_max: u32,
    pub backoff_first: Duration,
    pub backoff_max: Duration,
}

impl RetryPolicy {
    /// A load test's: shorter than a terminal's 1-30 s (PROTOCOL.md 7.3), so that a run
    /// through a restart of the gateway still ends in reasonable time.
    pub const LOAD_TEST: RetryPolicy = RetryPolicy {
        attempts_max: 8,
        backoff_first: Duration::from_millis(250),
        backoff_max: Duration::from_secs(8),
    };

    fn backoff(&self, failures: u32, rng: &mut StdRng) -> Duration {
        let limit = self
            .backoff_first
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
            .min(self.backoff_max);
        limit.mul_f64(0.5 + 0.5 * rng.random::<f64>())
    }
}

/// The gateway as the uploader sees it: a connection that uploads one batch and waits
/// for its result (with a timeout), and can be replaced by a new one.
pub trait Uplink {
    fn upload(&mut self, sales: &[OfflineSale]) -> impl Future<Output = Result<OfflineResult, ClientError>> + Send;
    /// Signs on again on a new connection.
    fn reconnect(&mut self) -> impl Future<Output = Result<(), ClientError>> + Send;
    /// `batch_max` of the limits the current connection was told.
    fn batch_max(&self) -> u16;
}

/// Signs on again, retrying with back-off; counts each failure in `batches`.
pub async fn reconnect<U: Uplink>(
    up: &mut U,
    policy: &RetryPolicy,
    rng: &mut StdRng,
    batches: &mut BatchCounts,
) -> Result<(), ClientError> {
    let mut failures = 0;
    loop {
        match up.reconnect().await {
            Ok(()) => return Ok(()),
            Err(e) => {
                batches.reconnect_failed += 1;
                failures += 1;
                if failures >= policy.attempts_max {
                    return Err(e);
                }
                tokio::time::sleep(policy.backoff(failures, rng)).await;
            }
        }
    }
}

/// Uploads `sales` (oldest first) in batches, each answered before the next. A batch
/// that got `system_error` is sent again on the same connection, one cut off on a new
/// one; a refused batch (`bad_mac`, `bad_batch`) is given up at once (resending the same
/// sales cannot change the answer). `Err` when the gateway could not be reached again:
/// the sales from the batch in hand on are then given up.
pub async fn upload_all<U: Uplink>(
    up: &mut U,
    sales: &[OfflineSale],
    policy: &RetryPolicy,
    rng: &mut StdRng,
    out: &mut UploadTally,
) -> Result<(), ClientError> {
    let mut at = 0;
    while at < sales.len() {
        let n = usize::from(up.batch_max().clamp(1, BATCH_MAX)).min(sales.len() - at);
        let batch = &sales[at..at + n];
        // Whether an attempt may have posted some of the batch without saying so.
        let mut uncertain = false;
        let mut failures = 0;
        let mut connected = true;
        let give_up = loop {
            if !connected {
                if let Err(e) = reconnect(up, policy, rng, &mut out.batches).await {
                    break Some(e);
                }
                connected = true;
            }
            match up.upload(batch).await {
                Ok(r) => match r.status {
                    OfflineStatus::Accepted => {
                        out.batches.accepted += 1;
                        let (posted, duplicates) = (u64::from(r.posted), u64::from(r.duplicates));
                        if posted + duplicates != n as u64 || r.first_tx_seq != batch[0].tx_seq {
                            out.mismatched += 1;
                        }
                        out.posted += posted;
                        out.duplicates += duplicates;
                        out.flagged += u64::from(r.flagged);
                        out.held += n as u64;
                        out.held_fen += batch.iter().map(|s| i128::from(s.amount_fen)).sum::<i128>();
                        break None;
                    }
                    OfflineStatus::BadMac | OfflineStatus::BadBatch => {
                        if r.status == OfflineStatus::BadMac {
                            out.batches.bad_mac += 1;
                        } else {
                            out.batches.bad_batch += 1;
                        }
                        // The same sales would be refused the same way on any attempt.
                        out.not_uploaded += n as u64;
                        break None;
                    }
                    OfflineStatus::SystemError => {
                        out.batches.system_error += 1;
                        uncertain = true;
                    }
                },
                Err(_) => {
                    out.batches.cut_off += 1;
                    uncertain = true;
                    connected = false;
                }
            }
            failures += 1;
            if failures >= policy.attempts_max {
                if uncertain {
                    out.unsure += n as u64;
                } else {
                    out.not_uploaded += n as u64;
                }
                break None;
            }
            tokio::time::sleep(policy.backoff(failures, rng)).await;
        };
        at += n;
        if let Some(e) = give_up {
            if uncertain {
                out.unsure += n as u64;
            } else {
                out.not_uploaded += n as u64;
            }
            out.not_uploaded += (sales.len() - at) as u64;
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::collections::{BTreeSet, VecDeque};

    #[test]
    fn the_counter_skips_one_after_every_k_and_knows_which() {
        let mut c = SeqCounter::new(100, 3);
        let got: Vec<u64> = (0..7).map(|_| c.take()).collect();
        assert_eq!(got, vec![101, 102, 103, 105, 106, 107, 109]);
        assert_eq!(c.skipped(), vec![(104, 104), (108, 108)]);
        assert_eq!(c.skipped_count(), 2);
        assert_eq!((c.first(), c.last(), c.used()), (Some(101), 109, 7));
        // A skip is only taken together with the next number.
        assert_eq!(c.peek(), 110);
        assert_eq!((c.take(), c.take()), (110, 111));
        assert_eq!(c.peek(), 113);
        assert_eq!(c.skipped(), vec![(104, 104), (108, 108)]);
        // Without skipping, every number is used.
        let mut plain = SeqCounter::new(0, 0);
        for want in 1..=50 {
            assert_eq!(plain.take(), want);
        }
        assert!(plain.skipped().is_empty());
        assert_eq!(SeqCounter::new(9, 1).first(), None);
    }

    #[test]
    fn skipped_numbers_are_exactly_those_never_handed_out() {
        for k in 1..6 {
            let mut c = SeqCounter::new(17, k);
            let used: BTreeSet<u64> = (0..40).map(|_| c.take()).collect();
            let never: Vec<(u64, u64)> = (18..=c.last()).filter(|s| !used.contains(s)).map(|s| (s, s)).collect();
            assert_eq!(c.skipped(), never, "skip_every {k}");
            assert_eq!(c.skipped_count(), never.len() as u64);
        }
    }

    #[test]
    fn offline_terminals_are_the_percent_asked_rounded_up_and_spread() {
        let count = |n: u64, pct: u8| (0..n).filter(|i| goes_offline(*i, pct)).count();
        assert_eq!(count(20, 50), 10);
        assert_eq!(count(20, 0), 0);
        assert_eq!(count(20, 100), 20);
        assert_eq!(count(50, 1), 1);
        assert_eq!(count(7, 30), 3);
        let picked: Vec<u64> = (0..10).filter(|i| goes_offline(*i, 50)).collect();
        assert_eq!(picked, vec![0, 2, 4, 6, 8]);
    }

    fn limits() -> OfflineLimits {
        OfflineLimits {
            sale_max_fen: 10_00,
            card_day_max_fen: 15_00,
            terminal_total_max_fen: 40_00,
            offline_minutes_max: 60,
            sales_max: 100,
            batch_max: 16,
        }
    }

    #[test]
    fn offline_sales_stay_within_every_limit() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut b = OfflineBudget::new(limits());
        let mut sold = Vec::new();
        while let Some((card, amount)) = next_sale(&b, &mut rng, 5_00, 20_00, |r| Some(CardNo(r.random_range(1..=3)))) {
            b.record(card, amount);
            sold.push((card, amount));
        }
        assert!(!sold.is_empty());
        assert!(sold.iter().all(|(_, a)| (5_00..=10_00).contains(a)), "{sold:?}");
        let total: i64 = sold.iter().map(|(_, a)| a).sum();
        assert!(total <= 40_00);
        for card in 1..=3 {
            let c: i64 = sold.iter().filter(|(k, _)| k.0 == card).map(|(_, a)| a).sum();
            assert!(c <= 15_00, "card {card}: {c}");
        }
        // Told not to sell offline: nothing.
        let none = OfflineBudget::new(OfflineLimits {
            offline_minutes_max: 0,
            ..limits()
        });
        assert_eq!(next_sale(&none, &mut rng, 1_00, 2_00, |_| Some(CardNo(1))), None);
        let few = OfflineBudget::new(OfflineLimits {
            sales_max: 0,
            ..limits()
        });
        assert!(!few.open());
        // A per-sale limit under the smallest amount asked: nothing either.
        assert_eq!(next_sale(&b, &mut rng, 11_00, 12_00, |_| Some(CardNo(9))), None);
    }

    /// A gateway that answers from a script: each entry is one attempt's outcome.
    struct Scripted {
        script: VecDeque<Result<OfflineStatus, ()>>,
        reconnects: VecDeque<bool>,
        /// Sequence numbers the gateway holds.
        held: BTreeSet<u64>,
        batches: Vec<Vec<u64>>,
        reconnected: u32,
    }

    impl Scripted {
        fn new(script: Vec<Result<OfflineStatus, ()>>) -> Scripted {
            Scripted {
                script: script.into(),
                reconnects: VecDeque::new(),
                held: BTreeSet::new(),
                batches: Vec::new(),
                reconnected: 0,
            }
        }
    }

    impl Uplink for Scripted {
        async fn upload(&mut self, sales: &[OfflineSale]) -> Result<OfflineResult, ClientError> {
            self.batches.push(sales.iter().map(|s| s.tx_seq).collect());
            let outcome = self.script.pop_front().unwrap_or(Ok(OfflineStatus::Accepted));
            let (mut posted, mut duplicates) = (0, 0);
            let status = match outcome {
                // Cut off after the gateway posted the first sale.
                Err(()) => {
                    self.held.insert(sales[0].tx_seq);
                    return Err(ClientError::Closed);
                }
                Ok(OfflineStatus::SystemError) => {
                    // Half posted before the journal failed; the result says nothing.
                    for s in &sales[..sales.len() / 2] {
                        self.held.insert(s.tx_seq);
                    }
                    OfflineStatus::SystemError
                }
                Ok(OfflineStatus::Accepted) => {
                    for s in sales {
                        if self.held.insert(s.tx_seq) {
                            posted += 1;
                        } else {
                            duplicates += 1;
                        }
                    }
                    OfflineStatus::Accepted
                }
                Ok(refused) => refused,
            };
            let ok = status == OfflineStatus::Accepted;
            Ok(OfflineResult {
                first_tx_seq: sales[0].tx_seq,
                count: sales.len() as u16,
                status,
                posted: if ok { posted } else { 0 },
                duplicates: if ok { duplicates } else { 0 },
                flagged: 0,
                first_bad_seq: 0,
                last_tx_seq: self.held.last().copied().unwrap_or(0),
            })
        }

        async fn reconnect(&mut self) -> Result<(), ClientError> {
            self.reconnected += 1;
            if self.reconnects.pop_front().unwrap_or(true) {
                Ok(())
            } else {
                Err(ClientError::Closed)
            }
        }

        fn batch_max(&self) -> u16 {
            4
        }
    }

    fn sales(n: u64) -> Vec<OfflineSale> {
        (1..=n)
            .map(|s| OfflineSale {
                tx_seq: 10 + s,
                card: CardNo(1),
                amount_fen: 1_00 * s as i64,
                sale_time_ms: 0,
                mac: [0; 16],
            })
            .collect()
    }

    const FAST: RetryPolicy = RetryPolicy {
        attempts_max: 3,
        backoff_first: Duration::ZERO,
        backoff_max: Duration::ZERO,
    };

    #[tokio::test]
    async fn batches_are_at_most_batch_max_in_order() {
        let mut up = Scripted::new(vec![]);
        let mut out = UploadTally::default();
        let mut rng = StdRng::seed_from_u64(1);
        upload_all(&mut up, &sales(10), &FAST, &mut rng, &mut out)
            .await
            .unwrap();
        assert_eq!(
            up.batches,
            vec![vec![11, 12, 13, 14], vec![15, 16, 17, 18], vec![19, 20]]
        );
        assert_eq!((out.posted, out.duplicates, out.held), (10, 0, 10));
        assert_eq!(out.held_fen, (1..=10).map(|s| s * 1_00).sum::<i128>());
        assert_eq!(out.batches.accepted, 3);
        assert_eq!((out.not_uploaded, out.unsure, out.mismatched), (0, 0, 0));
    }

    #[tokio::test]
    async fn a_system_error_or_a_cut_off_batch_is_sent_again_and_posted_once() {
        let mut up = Scripted::new(vec![
            Ok(OfflineStatus::SystemError),
            Ok(OfflineStatus::Accepted),
            Err(()),
        ]);
        let mut out = UploadTally::default();
        let mut rng = StdRng::seed_from_u64(1);
        upload_all(&mut up, &sales(8), &FAST, &mut rng, &mut out).await.unwrap();
        // Batch 1 twice (system error), batch 2 twice (cut off, then on a new connection).
        assert_eq!(up.batches.len(), 4);
        assert_eq!(up.batches[0], up.batches[1]);
        assert_eq!(up.batches[2], up.batches[3]);
        assert_eq!(up.reconnected, 1);
        // Each sale held once: what the failed attempts posted comes back as duplicates.
        assert_eq!((out.posted, out.duplicates, out.held), (5, 3, 8));
        assert_eq!(up.held.len(), 8);
        assert_eq!(
            out.batches,
            BatchCounts {
                accepted: 2,
                system_error: 1,
                cut_off: 1,
                ..BatchCounts::default()
            }
        );
        assert_eq!((out.not_uploaded, out.unsure), (0, 0));
    }

    #[tokio::test]
    async fn refused_batches_are_given_up_and_the_rest_goes_on() {
        let mut up = Scripted::new(vec![Ok(OfflineStatus::BadMac), Ok(OfflineStatus::Accepted)]);
        let mut out = UploadTally::default();
        let mut rng = StdRng::seed_from_u64(1);
        upload_all(&mut up, &sales(8), &FAST, &mut rng, &mut out).await.unwrap();
        assert_eq!(up.batches.len(), 2, "a refused batch is not resent");
        assert_eq!((out.not_uploaded, out.held, out.batches.bad_mac), (4, 4, 1));
    }

    #[tokio::test]
    async fn when_retries_run_out_the_sales_are_counted_unsure_or_not_uploaded() {
        // Three system errors in a row: the first batch may be partly posted.
        let mut up = Scripted::new(vec![Ok(OfflineStatus::SystemError); 3]);
        let mut out = UploadTally::default();
        let mut rng = StdRng::seed_from_u64(1);
        upload_all(&mut up, &sales(6), &FAST, &mut rng, &mut out).await.unwrap();
        assert_eq!((out.unsure, out.held, out.not_uploaded), (4, 2, 0));

        // Cut off, and the gateway cannot be reached again: the batch is unsure, the
        // rest never sent.
        let mut up = Scripted::new(vec![Err(())]);
        up.reconnects = vec![false; 3].into();
        let mut out = UploadTally::default();
        assert!(
            upload_all(&mut up, &sales(10), &FAST, &mut rng, &mut out)
                .await
                .is_err()
        );
        assert_eq!((out.unsure, out.not_uploaded, out.held), (4, 6, 0));
        assert_eq!(out.batches.reconnect_failed, 3);
    }
}
