//! The ledger's state records as the journal stores them: what each submission leaves
//! for the next checkpoint, where each record lands in sled, and the ledger's schema
//! for the journal (`LedgerSchema`).
//!
//! Key prefixes in the one sled tree (the journal owns `'J'` and `'M'`):
//!
//! ```text
//! 'A' account(u64 BE)               Account      } checkpointed state, as of the
//! 'C' card(u64 BE)                  Card         } entry id in meta `checkpoint_id`
//! 'T' terminal(u64 BE)              Terminal     }
//! 'S' terminal(u64 BE)              [SeqRecord]  } (a terminal's remembered outcomes)
//! 'P' account(u64 BE)               Person       }
//! 'O' operator(u64 BE)              Operator     }
//! 'B' version % log max(u64 BE)     BlacklistChange } (a bounded ring, like 'S')
//! 'U' audit id % kept(u64 BE)       AuditRecord  } (a bounded ring)
//! 'G' batch hash(8) account(u64 BE) GrantMark    }
//! 'E' exception(u64 BE)             Exception    } checkpointed (the card desk's to settle)
//! 'K' operator(u64 BE) key           IdempotentAnswer } checkpointed; removed when expired
//! 'R' terminal(u64 BE)              TerminalRecord } the registry (its key sealed); a
//!                                                    } record here replaces a 'T' one
//! 'N' merchant(u64 BE)              Merchant     }
//! 'D' door group(u64 BE)            DoorGroup    }
//! 'H' terminal(u64) generation(u32) KeyHandout   }
//! 'Q' batch(u64 BE)                 StockBatch   } blank card stock
//! 'W' card(u64 BE)                  StockRemoved }
//! 'Y' count(u64 BE)                 StockCount   }
//! 'V' operator(u64 BE)              PasswordRecord  the console password (argon2id)
//! 'X' terminal(u64 BE)              SeqGaps      } sequence numbers never seen
//! 'L' card(u64 BE)                  i64 ms       } when a card joined the blacklist
//! 'F' day(i32 BE, biased)           SettlementClose } business days closed for settlement
//! 'I' kind(1) id(u64) id(u64)       AccessRecord } door access: doors 'd', schedules 's',
//!                                                  } the calendar 'h', permissions 'p',
//!                                                  } door groups 'g', cache changes 'l'
//!                                                  } (group, version % log max), controllers
//!                                                  } 'c', anti-passback 'a' (account, group),
//!                                                  } answers 'R' (controller, 0), all of a
//!                                                  } controller's; data written before
//!                                                  } them has 'r' (controller, event % 64),
//!                                                  } rewritten as 'R' at start-up
//! 'Z' import(u64 BE) chunk(u32 BE)  staged import chunk, written with its commit
//! 'M' params / demo / gateway_id    the ledger's meta values
//! 'M' day_closed                    DayClose     checkpointed: the last business day closed
//! ```

use std::collections::HashMap;

use cardgate_codec::CardNo;
use cardgate_domain::access::{AccessRecord, AnswerSubject, CheckedAnswer, ControllerCheckedAnswers};
use cardgate_domain::entry::{DayClose, EntryRecord, SettlementClose, TxEntry};
use cardgate_domain::model::{
    Account, AuditRecord, BlacklistChange, Card, DoorGroup, Exception, GrantMark, IdempotentAnswer, KeyHandout,
    Merchant, Params, Person, SeqGaps, SeqRecord, StockBatch, StockCount, StockRemoval, Terminal, TerminalRecord,
    grant_key,
};
use cardgate_domain::operator::{Operator, PasswordRecord};
use cardgate_journal::record::{decode_record, encode_record};
use cardgate_journal::store::{key_meta, key_u64};
use cardgate_journal::{Schema, StoreError, Write};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::access::{CACHE_LOG_PER_GROUP_MAX, answer_slot};
use crate::audit_log::audit_slot;
use crate::blacklist::BLACKLIST_LOG_MAX;

pub const PREFIX_ACCOUNT: u8 = b'A';
pub const PREFIX_CARD: u8 = b'C';
pub const PREFIX_TERMINAL: u8 = b'T';
pub const PREFIX_SEQ: u8 = b'S';
pub const PREFIX_PERSON: u8 = b'P';
pub const PREFIX_OPERATOR: u8 = b'O';
pub const PREFIX_BLACKLIST: u8 = b'B';
pub const PREFIX_AUDIT: u8 = b'U';
pub const PREFIX_GRANT: u8 = b'G';
pub const PREFIX_STAGED: u8 = b'Z';
pub const PREFIX_EXCEPTION: u8 = b'E';
pub const PREFIX_ANSWER: u8 = b'K';
pub const PREFIX_TERMINAL_RECORD: u8 = b'R';
pub const PREFIX_MERCHANT: u8 = b'N';
pub const PREFIX_DOOR_GROUP: u8 = b'D';
pub const PREFIX_HANDOUT: u8 = b'H';
pub const PREFIX_STOCK_BATCH: u8 = b'Q';
pub const PREFIX_STOCK_REMOVED: u8 = b'W';
pub const PREFIX_STOCK_COUNT: u8 = b'Y';
pub const PREFIX_PASSWORD: u8 = b'V';
pub const PREFIX_GAPS: u8 = b'X';
pub const PREFIX_LISTED: u8 = b'L';
pub const PREFIX_SETTLEMENT: u8 = b'F';
pub const PREFIX_ACCESS: u8 = b'I';
/// A POS terminal's offline spending per card and day (`OfflineCardDays`).
pub const PREFIX_OFFLINE_DAYS: u8 = b'o';
/// When a business day was closed for settlement (`SettlementTime`).
pub const PREFIX_SETTLEMENT_TIME: u8 = b'f';

/// A business day as a key: days since 1970 biased so that they sort as unsigned.
pub fn day_key(day: i32) -> u64 {
    (i64::from(day) - i64::from(i32::MIN)) as u64
}

/// The ledger's meta keys, beside the journal's own.
pub mod meta {
    pub const PARAMS: &str = "params";
    /// Set once the demo campus exists.
    pub const DEMO: &str = "demo";
    /// Set once the demo campus's doors and attendance clocks exist.
    pub const DEMO_DOORS: &str = "demo_doors";
    /// Identifies this gateway in the central store (u64 BE), chosen at first start.
    pub const GATEWAY_ID: &str = "gateway_id";
    /// The last business day closed (a `DayClose` record).
    pub const DAY_CLOSED: &str = "day_closed";
}

/// Outcomes remembered per terminal. A terminal has at most `pipeline_depth_max` (at
/// most this many) requests unanswered per connection, so every retry finds its answer;
/// a POS reversal undoes one of the terminal's last `SEQ_SLOTS` transactions.
pub const SEQ_SLOTS: usize = 32;

const _: () = assert!(SEQ_SLOTS <= 256, "slots are addressed by a byte");

/// The slot that remembers sequence number `seq`.
pub fn seq_slot(seq: u64) -> u8 {
    (seq % SEQ_SLOTS as u64) as u8
}

/// A state record changed by a submission's entry. Meta values and staged chunks are
/// written with the commit itself; everything else goes to the next checkpoint.
#[derive(Clone, Debug)]
pub enum StateWrite {
    Account(Account),
    Card(Card),
    Terminal(Box<Terminal>),
    /// A remembered outcome, stored in its terminal's slot `seq % SEQ_SLOTS`.
    Seq(SeqRecord),
    /// Several of one terminal's remembered outcomes, one per slot: what `Seq` records
    /// waiting for a checkpoint become (`LedgerSchema::absorb`), so that a terminal's
    /// outcomes are one waiting record, not up to `SEQ_SLOTS`. Never sent by a
    /// submitter.
    Seqs(Vec<SeqRecord>),
    /// Boxed: at 192 bytes it would set the size of every record waiting for a
    /// checkpoint, and parameters change a few times a year.
    Params(Box<Params>),
    Meta(&'static str, Vec<u8>),
    Person(Box<Person>),
    Operator(Box<Operator>),
    /// A blacklist change, stored in slot `version % BLACKLIST_LOG_MAX`.
    Blacklist(BlacklistChange),
    /// An audit record, stored in slot `id % AUDIT_KEPT`.
    Audit(Box<AuditRecord>),
    Grant(Box<GrantMark>),
    Exception(Box<Exception>),
    Answer(Box<IdempotentAnswer>),
    TerminalRecord(Box<TerminalRecord>),
    Merchant(Box<Merchant>),
    DoorGroup(Box<DoorGroup>),
    Handout(Box<KeyHandout>),
    StockBatch(Box<StockBatch>),
    StockRemoved(Box<StockRemoved>),
    StockCount(Box<StockCount>),
    Password(Box<PasswordRecord>),
    /// The last business day closed.
    Gaps(Box<SeqGaps>),
    /// When a card joined the blacklist; `None`: it left it.
    Listed(CardNo, Option<i64>),
    Settlement(Box<SettlementClose>),
    DayClosed(Box<DayClose>),
    /// A door access record (`access.rs`).
    Access(Box<AccessRecord>),
    /// A terminal's offline spending per card and day, as it stands (each write the
    /// whole of its recent days).
    OfflineDays(Box<OfflineCardDays>),
    /// When a day was closed for settlement: kept apart from the close's figures, which
    /// carry it only per merchant (a day without sales had none).
    SettlementTime(SettlementTime),
    /// Written with its commit like `Meta`, never by a checkpoint; `None` removes the
    /// key. Holds data replay may need whatever the checkpoint (staged imports).
    Staged(Vec<u8>, Option<Vec<u8>>),
}

/// Where a state write lands, so that a later write to the same record replaces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StateKey {
    Account(u64),
    Card(u64),
    Terminal(u64),
    /// A terminal's remembered outcomes, all slots.
    Seq(u64),
    Params,
    Person(u64),
    Operator(u64),
    Blacklist(u64),
    Audit(u64),
    Grant(u64, u64),
    Exception(u64),
    /// Operator id and a hash of the key.
    Answer(u64, u64),
    TerminalRecord(u64),
    Merchant(u64),
    DoorGroup(u64),
    Handout(u64, u32),
    StockBatch(u64),
    StockRemoved(u64),
    StockCount(u64),
    Password(u64),
    DayClosed,
    Gaps(u64),
    Listed(u64),
    Settlement(i32),
    Access(u8, u64, u64),
    OfflineDays(u64),
    SettlementTime(i32),
}

/// A settlement close's time, by business day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementTime {
    pub day: i32,
    pub closed_ms: i64,
}

/// What one POS terminal's posted offline sales spent per card and business day, for the
/// per-card offline limit's flag (`offline_over_limit`), so that a restart does not
/// start the sums again. Only the days a sale can still be judged on are kept
/// (`OFFLINE_DAYS_KEPT`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflineCardDays {
    pub terminal: u64,
    /// (card, business day, fen), in no particular order.
    pub days: Vec<(u64, i32, i64)>,
}

/// Business days of offline spending kept per terminal: today and the week before. A
/// sale is judged on the day of its (plausible) time, at most `offline_minutes_max`
/// before its upload; beyond a week a terminal's clock is not believed anyway.
pub const OFFLINE_DAYS_KEPT: i32 = 8;

/// A blank card that left the stock other than by being issued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockRemoved {
    #[serde(with = "cardgate_domain::model::card_no")]
    pub card: CardNo,
    pub how: StockRemoval,
    pub note: String,
    pub time_ms: i64,
}

/// When a card joined the blacklist, as stored (`None`: it is not on it; kept rather
/// than removed, so that a checkpoint never has to delete).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedSince {
    pub since_ms: Option<i64>,
}

/// Where an operator's idempotent answer is stored.
pub fn answer_key(operator_id: u64, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + key.len());
    k.push(PREFIX_ANSWER);
    k.extend_from_slice(&operator_id.to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

/// The records one submission leaves.
pub type Writes = SmallVec<[StateWrite; 3]>;

/// The ledger's journal: entries are `EntryRecord`s, state records `StateWrite`s.
pub struct LedgerSchema;

pub type Journal = cardgate_journal::Journal<LedgerSchema>;
pub type Submission = cardgate_journal::Submission<LedgerSchema>;
pub type JournalEntry = cardgate_journal::JournalEntry<EntryRecord>;

impl StateWrite {
    /// The record under its key, as a write.
    fn write(&self) -> Write {
        let (k, v) = self.encode();
        (k, Some(v))
    }

    fn encode(&self) -> (sled::IVec, Vec<u8>) {
        match self {
            StateWrite::Account(a) => (key_u64(PREFIX_ACCOUNT, a.id).as_ref().into(), encode_record(a)),
            StateWrite::Card(c) => (key_u64(PREFIX_CARD, c.no.0).as_ref().into(), encode_record(c)),
            StateWrite::Terminal(t) => (
                key_u64(PREFIX_TERMINAL, t.id).as_ref().into(),
                encode_record(t.as_ref()),
            ),
            StateWrite::Seq(_) | StateWrite::Seqs(_) => {
                unreachable!("remembered outcomes are merged per terminal by checkpoint_writes")
            }
            StateWrite::Params(p) => (key_meta(meta::PARAMS).into(), encode_record(p.as_ref())),
            StateWrite::Meta(name, v) => (key_meta(name).into(), v.clone()),
            StateWrite::Person(p) => (
                key_u64(PREFIX_PERSON, p.account).as_ref().into(),
                encode_record(p.as_ref()),
            ),
            StateWrite::Operator(o) => (
                key_u64(PREFIX_OPERATOR, o.id).as_ref().into(),
                encode_record(o.as_ref()),
            ),
            StateWrite::Blacklist(c) => (
                key_u64(PREFIX_BLACKLIST, c.version % BLACKLIST_LOG_MAX).as_ref().into(),
                encode_record(c),
            ),
            StateWrite::Audit(a) => (
                key_u64(PREFIX_AUDIT, audit_slot(a.id)).as_ref().into(),
                encode_record(a.as_ref()),
            ),
            StateWrite::Grant(g) => {
                let (h, a) = grant_key(&g.batch_id, g.account);
                let mut k = Vec::with_capacity(17);
                k.push(PREFIX_GRANT);
                k.extend_from_slice(&h.to_be_bytes());
                k.extend_from_slice(&a.to_be_bytes());
                (k.into(), encode_record(g.as_ref()))
            }
            StateWrite::Exception(e) => (
                key_u64(PREFIX_EXCEPTION, e.id).as_ref().into(),
                encode_record(e.as_ref()),
            ),
            StateWrite::Answer(a) => (answer_key(a.operator_id, &a.key).into(), encode_record(a.as_ref())),
            StateWrite::TerminalRecord(t) => (
                key_u64(PREFIX_TERMINAL_RECORD, t.id).as_ref().into(),
                encode_record(t.as_ref()),
            ),
            StateWrite::Merchant(m) => (
                key_u64(PREFIX_MERCHANT, m.id).as_ref().into(),
                encode_record(m.as_ref()),
            ),
            StateWrite::DoorGroup(g) => (
                key_u64(PREFIX_DOOR_GROUP, g.id).as_ref().into(),
                encode_record(g.as_ref()),
            ),
            StateWrite::Handout(h) => {
                let mut k = key_u64(PREFIX_HANDOUT, h.terminal).to_vec();
                k.extend_from_slice(&h.key_generation.to_be_bytes());
                (k.into(), encode_record(h.as_ref()))
            }
            StateWrite::StockBatch(b) => (
                key_u64(PREFIX_STOCK_BATCH, b.id).as_ref().into(),
                encode_record(b.as_ref()),
            ),
            StateWrite::StockRemoved(r) => (
                key_u64(PREFIX_STOCK_REMOVED, r.card.0).as_ref().into(),
                encode_record(r.as_ref()),
            ),
            StateWrite::StockCount(c) => (
                key_u64(PREFIX_STOCK_COUNT, c.id).as_ref().into(),
                encode_record(c.as_ref()),
            ),
            StateWrite::Password(p) => (
                key_u64(PREFIX_PASSWORD, p.operator_id).as_ref().into(),
                encode_record(p.as_ref()),
            ),
            StateWrite::DayClosed(c) => (key_meta(meta::DAY_CLOSED).into(), encode_record(c.as_ref())),
            StateWrite::Gaps(g) => (
                key_u64(PREFIX_GAPS, g.terminal).as_ref().into(),
                encode_record(g.as_ref()),
            ),
            StateWrite::OfflineDays(d) => (
                key_u64(PREFIX_OFFLINE_DAYS, d.terminal).as_ref().into(),
                encode_record(d.as_ref()),
            ),
            StateWrite::SettlementTime(t) => (
                key_u64(PREFIX_SETTLEMENT_TIME, day_key(t.day)).as_ref().into(),
                encode_record(t),
            ),
            StateWrite::Listed(c, since) => (
                key_u64(PREFIX_LISTED, c.0).as_ref().into(),
                encode_record(&ListedSince { since_ms: *since }),
            ),
            StateWrite::Settlement(d) => (
                key_u64(PREFIX_SETTLEMENT, day_key(d.day)).as_ref().into(),
                encode_record(d.as_ref()),
            ),
            StateWrite::Access(r) => (access_key_bytes(r).into(), encode_record(r.as_ref())),
            StateWrite::Staged(k, v) => (k.as_slice().into(), v.clone().unwrap_or_default()),
        }
    }
}

impl Schema for LedgerSchema {
    type Entry = EntryRecord;
    type Record = StateWrite;
    type Key = StateKey;

    fn encode_entry(entry: &EntryRecord, out: &mut Vec<u8>) {
        EntryRecord::encode_into(entry.time_ms, &entry.body, out);
    }

    fn key(record: &StateWrite) -> Option<StateKey> {
        Some(match record {
            StateWrite::Account(a) => StateKey::Account(a.id),
            StateWrite::Card(c) => StateKey::Card(c.no.0),
            StateWrite::Terminal(t) => StateKey::Terminal(t.id),
            StateWrite::Seq(s) => StateKey::Seq(s.terminal),
            StateWrite::Seqs(all) => StateKey::Seq(all.first().map_or(0, |s| s.terminal)),
            StateWrite::Params(_) => StateKey::Params,
            StateWrite::Meta(..) | StateWrite::Staged(..) => return None,
            StateWrite::Person(p) => StateKey::Person(p.account),
            StateWrite::Operator(o) => StateKey::Operator(o.id),
            StateWrite::Blacklist(c) => StateKey::Blacklist(c.version % BLACKLIST_LOG_MAX),
            StateWrite::Audit(a) => StateKey::Audit(audit_slot(a.id)),
            StateWrite::Grant(g) => {
                let (h, a) = grant_key(&g.batch_id, g.account);
                StateKey::Grant(h, a)
            }
            StateWrite::Exception(e) => StateKey::Exception(e.id),
            StateWrite::Answer(a) => {
                let h = cardgate_domain::operator::hash_token(&a.key);
                let mut first = [0u8; 8];
                first.copy_from_slice(&h[..8]);
                StateKey::Answer(a.operator_id, u64::from_be_bytes(first))
            }
            StateWrite::TerminalRecord(t) => StateKey::TerminalRecord(t.id),
            StateWrite::Merchant(m) => StateKey::Merchant(m.id),
            StateWrite::DoorGroup(g) => StateKey::DoorGroup(g.id),
            StateWrite::Handout(h) => StateKey::Handout(h.terminal, h.key_generation),
            StateWrite::StockBatch(b) => StateKey::StockBatch(b.id),
            StateWrite::StockRemoved(r) => StateKey::StockRemoved(r.card.0),
            StateWrite::Gaps(g) => StateKey::Gaps(g.terminal),
            StateWrite::OfflineDays(d) => StateKey::OfflineDays(d.terminal),
            StateWrite::SettlementTime(t) => StateKey::SettlementTime(t.day),
            StateWrite::Listed(c, _) => StateKey::Listed(c.0),
            StateWrite::Settlement(d) => StateKey::Settlement(d.day),
            StateWrite::StockCount(c) => StateKey::StockCount(c.id),
            StateWrite::Password(p) => StateKey::Password(p.operator_id),
            StateWrite::DayClosed(_) => StateKey::DayClosed,
            StateWrite::Access(r) => {
                let (kind, a, b) = access_key(r);
                StateKey::Access(kind, a, b)
            }
        })
    }

    fn commit_write(record: &StateWrite) -> Write {
        match record {
            StateWrite::Staged(key, None) => (key.as_slice().into(), None),
            other => other.write(),
        }
    }

    /// A terminal's remembered outcomes wait as one record, newest per slot, and so do a
    /// door controller's answers (the newer event number keeping a slot, as in memory);
    /// every other record is replaced by a newer one under its key. One waiting record per
    /// slot filled the bound on waiting records (`CHECKPOINT_RECORDS_MAX`) within
    /// seconds at 10,000 terminals (32 slots each), and so checkpointed them every few
    /// seconds instead of every 10.
    fn absorb(waiting: &mut StateWrite, newer: StateWrite) {
        if let (StateWrite::Access(w), StateWrite::Access(n)) = (&mut *waiting, &newer) {
            let answer = match **n {
                AccessRecord::Answer(a) => Some(CheckedAnswer::from(a)),
                AccessRecord::CheckedAnswer(a) => Some(a),
                _ => None,
            };
            if let Some(a) = answer {
                absorb_answer(w, a);
                return;
            }
        }
        let StateWrite::Seq(r) = newer else {
            *waiting = newer;
            return;
        };
        match waiting {
            StateWrite::Seqs(all) => put_slot(all, r),
            StateWrite::Seq(old) if seq_slot(old.seq) != seq_slot(r.seq) => {
                let mut all = Vec::with_capacity(4);
                all.push(*old);
                all.push(r);
                *waiting = StateWrite::Seqs(all);
            }
            other => *other = StateWrite::Seq(r),
        }
    }

    /// Each record under its own key, except a terminal's remembered outcomes, which
    /// are merged into one record per terminal (`'S' terminal`), and a door
    /// controller's remembered answers, likewise (`'I' 'R' terminal`). One key per slot
    /// made a checkpoint at 10,000 terminals some 300,000 sled inserts, most of the
    /// checkpointer's CPU; per terminal it is one read and one insert.
    fn checkpoint_writes<'a>(
        tree: &sled::Tree,
        records: impl Iterator<Item = &'a StateWrite>,
    ) -> Result<Vec<Write>, StoreError> {
        let mut out = Vec::new();
        let mut slots: HashMap<u64, Vec<SeqRecord>, foldhash::fast::RandomState> = HashMap::default();
        let mut answers: HashMap<u64, Vec<SlotAnswer>, foldhash::fast::RandomState> = HashMap::default();
        for w in records {
            match w {
                StateWrite::Seq(s) => slots.entry(s.terminal).or_default().push(*s),
                StateWrite::Seqs(all) => {
                    for s in all {
                        slots.entry(s.terminal).or_default().push(*s);
                    }
                }
                StateWrite::Access(r) => match &**r {
                    AccessRecord::Answer(a) => {
                        answers
                            .entry(a.terminal)
                            .or_default()
                            .push((a.event_seq, a.answer, None))
                    }
                    AccessRecord::Answers(all) => answers
                        .entry(all.terminal)
                        .or_default()
                        .extend(all.answers.iter().map(|&(s, a)| (s, a, None))),
                    AccessRecord::CheckedAnswer(a) => {
                        answers
                            .entry(a.terminal)
                            .or_default()
                            .push((a.event_seq, a.answer, a.subject))
                    }
                    AccessRecord::CheckedAnswers(all) => answers.entry(all.terminal).or_default().extend(&all.answers),
                    _ => out.push(w.write()),
                },
                StateWrite::Staged(key, None) => out.push((key.as_slice().into(), None)),
                other => out.push(other.write()),
            }
        }
        for (terminal, changed) in slots {
            let key = key_u64(PREFIX_SEQ, terminal);
            let mut all: [Option<SeqRecord>; SEQ_SLOTS] = [None; SEQ_SLOTS];
            if let Some(old) = tree.get(key)? {
                for r in decode_record::<Vec<SeqRecord>>(&key, &old)? {
                    all[usize::from(seq_slot(r.seq))] = Some(r);
                }
            }
            for r in changed {
                all[usize::from(seq_slot(r.seq))] = Some(r);
            }
            let records: Vec<SeqRecord> = all.into_iter().flatten().collect();
            out.push((key.as_ref().into(), Some(encode_record(&records))));
        }
        for (terminal, changed) in answers {
            out.push(merged_answers(tree, terminal, &changed)?);
        }
        Ok(out)
    }
}

/// One slot of a controller's answers: (`event_seq`, answer, what it answered).
type SlotAnswer = (u64, u16, Option<AnswerSubject>);

/// A controller's stored answers with `changed` put in their slots: the write that
/// replaces its `'I' 'R'` record, always in the form with subjects (a record of an
/// older directory, without them, is read and rewritten).
fn merged_answers(tree: &sled::Tree, terminal: u64, changed: &[SlotAnswer]) -> Result<Write, StoreError> {
    let mut merged = ControllerCheckedAnswers {
        terminal,
        answers: Vec::new(),
    };
    let key = access_key_bytes(&AccessRecord::CheckedAnswers(merged.clone()));
    if let Some(old) = tree.get(&key)? {
        match decode_record::<AccessRecord>(&key, &old)? {
            AccessRecord::CheckedAnswers(a) => merged.answers = a.answers,
            AccessRecord::Answers(a) => merged.answers = ControllerCheckedAnswers::from(a).answers,
            other => {
                return Err(StoreError::Corrupt {
                    key,
                    reason: format!("a controller's answers hold {other:?}"),
                });
            }
        }
    }
    for &a in changed {
        put_answer(&mut merged.answers, a);
    }
    merged.answers.sort_unstable_by_key(|&(seq, _, _)| answer_slot(seq));
    Ok((key.into(), Some(encode_record(&AccessRecord::CheckedAnswers(merged)))))
}

/// A door controller's answer into the one record its answers wait as.
fn absorb_answer(waiting: &mut AccessRecord, a: CheckedAnswer) {
    match waiting {
        AccessRecord::Answer(old) => {
            *waiting = AccessRecord::CheckedAnswers(ControllerCheckedAnswers {
                terminal: old.terminal,
                answers: vec![(old.event_seq, old.answer, None)],
            });
        }
        AccessRecord::CheckedAnswer(old) => {
            *waiting = AccessRecord::CheckedAnswers(ControllerCheckedAnswers {
                terminal: old.terminal,
                answers: vec![(old.event_seq, old.answer, old.subject)],
            });
        }
        AccessRecord::Answers(all) => *waiting = AccessRecord::CheckedAnswers(all.clone().into()),
        _ => {}
    }
    match waiting {
        AccessRecord::CheckedAnswers(all) => put_answer(&mut all.answers, (a.event_seq, a.answer, a.subject)),
        other => *other = AccessRecord::CheckedAnswer(a),
    }
}

/// Puts an answer in its slot among a controller's answers unless the slot holds a
/// newer number, as memory does (`Controller::keep`).
fn put_answer(answers: &mut Vec<SlotAnswer>, a: SlotAnswer) {
    match answers.iter_mut().find(|(s, _, _)| answer_slot(*s) == answer_slot(a.0)) {
        Some(slot) if slot.0 <= a.0 => *slot = a,
        Some(_) => {}
        None => answers.push(a),
    }
}

/// Puts `r` in its slot among one terminal's waiting outcomes, replacing an older one.
fn put_slot(all: &mut Vec<SeqRecord>, r: SeqRecord) {
    match all.iter_mut().find(|s| seq_slot(s.seq) == seq_slot(r.seq)) {
        Some(s) => *s = r,
        None => all.push(r),
    }
}

/// Where an access record is stored: `'I'`, a kind byte, then its id(s).
pub(crate) fn access_key(r: &AccessRecord) -> (u8, u64, u64) {
    match r {
        AccessRecord::Door(d) => (b'd', d.id, 0),
        AccessRecord::Schedule(s) => (b's', s.id, 0),
        AccessRecord::Holidays(_) => (b'h', 0, 0),
        AccessRecord::Permission(p) => (b'p', p.id, 0),
        AccessRecord::Group(g) => (b'g', g.group, 0),
        AccessRecord::Change(c) => (b'l', c.group, c.version % CACHE_LOG_PER_GROUP_MAX),
        AccessRecord::Controller(c) => (b'c', c.terminal, 0),
        AccessRecord::Passback(p) => (b'a', p.account, p.group),
        // A controller's answers wait, and are stored, as one record.
        AccessRecord::Answer(a) => (b'R', a.terminal, 0),
        AccessRecord::Answers(a) => (b'R', a.terminal, 0),
        AccessRecord::CheckedAnswer(a) => (b'R', a.terminal, 0),
        AccessRecord::CheckedAnswers(a) => (b'R', a.terminal, 0),
    }
}

pub(crate) fn access_key_bytes(r: &AccessRecord) -> Vec<u8> {
    let (kind, a, b) = access_key(r);
    let mut k = Vec::with_capacity(18);
    k.push(PREFIX_ACCESS);
    k.push(kind);
    k.extend_from_slice(&a.to_be_bytes());
    k.extend_from_slice(&b.to_be_bytes());
    k
}

/// A door access record as the state write that stores it.
pub(crate) fn access_write(r: AccessRecord) -> StateWrite {
    StateWrite::Access(Box::new(r))
}

/// Where chunk `index` of staged import `import_id` is kept until it commits.
pub fn staged_key(import_id: u64, index: u32) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = PREFIX_STAGED;
    k[1..9].copy_from_slice(&import_id.to_be_bytes());
    k[9..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The remembered outcome a journaled decision leaves; used both when deciding and when
/// replaying, so the two cannot drift apart.
pub fn seq_record_of(entry: &TxEntry, time_ms: i64) -> SeqRecord {
    SeqRecord {
        terminal: entry.terminal,
        seq: entry.seq,
        kind: entry.kind,
        card: entry.card,
        amount_fen: entry.amount_fen,
        original_seq: entry.original_seq,
        account: entry.account,
        outcome: entry.outcome,
        time_ms,
        reversed_by: None,
    }
}

#[cfg(test)]
mod tests {
    use cardgate_domain::model::{Outcome, TxKind};

    use super::*;

    fn outcome(terminal: u64, seq: u64, tx_id: u64) -> StateWrite {
        StateWrite::Seq(SeqRecord {
            terminal,
            seq,
            kind: TxKind::Purchase,
            card: CardNo(1),
            amount_fen: 100,
            original_seq: 0,
            account: 1,
            outcome: Outcome::Approved {
                tx_id,
                balance_after_fen: 0,
            },
            time_ms: 0,
            reversed_by: None,
        })
    }

    /// What a committer does with each committed record (`put_dirty`), by hand.
    fn wait(waiting: &mut HashMap<StateKey, StateWrite>, w: StateWrite) {
        let key = LedgerSchema::key(&w).expect("checkpointed");
        match waiting.get_mut(&key) {
            Some(old) => LedgerSchema::absorb(old, w),
            None => {
                waiting.insert(key, w);
            }
        }
    }

    #[test]
    fn a_terminals_outcomes_wait_as_one_record_newest_per_slot_and_are_stored_as_one_value() {
        let mut waiting = HashMap::new();
        // Terminal 7: slots 1..=40 (1 and 33 share a slot, so do 2 and 34, ...),
        // terminal 8: one outcome. A card's record beside them is replaced as before.
        for seq in 1..=40 {
            wait(&mut waiting, outcome(7, seq, 1_000 + seq));
        }
        wait(&mut waiting, outcome(8, 5, 99));
        assert_eq!(waiting.len(), 2, "one waiting record per terminal, not per slot");
        let Some(StateWrite::Seqs(all)) = waiting.get(&StateKey::Seq(7)) else {
            panic!("terminal 7's outcomes wait merged");
        };
        assert_eq!(all.len(), SEQ_SLOTS);
        let mut seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (9..=40).collect::<Vec<_>>(), "the newest number keeps each slot");
        assert!(matches!(waiting.get(&StateKey::Seq(8)), Some(StateWrite::Seq(r)) if r.seq == 5));
        // The same slot again: replaced in place, not added.
        wait(&mut waiting, outcome(8, 5 + SEQ_SLOTS as u64, 100));
        assert!(matches!(waiting.get(&StateKey::Seq(8)), Some(StateWrite::Seq(r)) if r.seq == 37));

        // Stored: one value per terminal, merged with what the tree held.
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let old = [outcome(8, 6, 50)];
        for (k, v) in LedgerSchema::checkpoint_writes(&tree, old.iter()).unwrap() {
            tree.insert(k, v.unwrap()).unwrap();
        }
        let writes = LedgerSchema::checkpoint_writes(&tree, waiting.values()).unwrap();
        assert_eq!(writes.len(), 2);
        for (k, v) in writes {
            let stored: Vec<SeqRecord> = decode_record(&k, &v.unwrap()).unwrap();
            let mut seqs: Vec<u64> = stored.iter().map(|r| r.seq).collect();
            seqs.sort_unstable();
            match id_of(&k) {
                7 => assert_eq!(seqs, (9..=40).collect::<Vec<_>>()),
                8 => assert_eq!(seqs, vec![6, 37], "slot 6 kept from the tree"),
                other => panic!("terminal {other}"),
            }
        }
    }

    fn answer(terminal: u64, event_seq: u64, answer: u16) -> StateWrite {
        access_write(AccessRecord::CheckedAnswer(CheckedAnswer {
            terminal,
            event_seq,
            answer,
            subject: Some(AnswerSubject::punch(event_seq + 1_000_000_000)),
        }))
    }

    #[test]
    fn a_controllers_answers_wait_as_one_record_the_newer_number_keeping_a_slot() {
        let mut waiting = HashMap::new();
        for seq in 1..=70 {
            wait(&mut waiting, answer(9, seq, seq as u16));
        }
        // 3 arrives late (a retry decided again after 67 took its slot): 67 stays.
        wait(&mut waiting, answer(9, 3, 999));
        assert_eq!(waiting.len(), 1, "one waiting record per controller, not per slot");
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let writes = LedgerSchema::checkpoint_writes(&tree, waiting.values()).unwrap();
        assert_eq!(writes.len(), 1);
        let (k, v) = writes.into_iter().next().unwrap();
        let AccessRecord::CheckedAnswers(stored) = decode_record(&k, &v.unwrap()).unwrap() else {
            panic!("stored as one record");
        };
        let mut seqs: Vec<SlotAnswer> = stored.answers;
        seqs.sort_unstable_by_key(|a| a.0);
        assert_eq!(
            seqs,
            (7..=70)
                .map(|s| (s, s as u16, Some(AnswerSubject::punch(s + 1_000_000_000))))
                .collect::<Vec<_>>()
        );
    }

    /// A directory written before answers had subjects: its record is read, kept for the
    /// slots nothing newer took, and rewritten with subjects where they are known.
    #[test]
    fn answers_of_an_older_directory_are_merged_without_subjects() {
        use cardgate_domain::access::ControllerAnswers;
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let old = AccessRecord::Answers(ControllerAnswers {
            terminal: 9,
            answers: vec![(1, 0), (2, 13)],
        });
        tree.insert(access_key_bytes(&old), encode_record(&old)).unwrap();
        let mut waiting = HashMap::new();
        wait(&mut waiting, answer(9, 2, 0));
        let writes = LedgerSchema::checkpoint_writes(&tree, waiting.values()).unwrap();
        let (k, v) = writes.into_iter().next().unwrap();
        let AccessRecord::CheckedAnswers(stored) = decode_record(&k, &v.unwrap()).unwrap() else {
            panic!("rewritten with subjects");
        };
        assert_eq!(
            stored.answers,
            vec![(1, 0, None), (2, 0, Some(AnswerSubject::punch(1_000_000_002)))]
        );
    }

    fn id_of(key: &[u8]) -> u64 {
        assert_eq!(key[0], PREFIX_SEQ);
        u64::from_be_bytes(key[1..9].try_into().unwrap())
    }
}
