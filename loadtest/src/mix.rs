//! What the simulated terminals send, and what each answer means for the run.
//!
//! A terminal sends purchases, now and then reverses one of its own recent approved
//! purchases (a cashier's mistake), and answers balance inquiries. Each answer is
//! classified as one the run expects (an approval, a business decline such as
//! insufficient funds) or one it does not (a system error, a decline that can only be a
//! bug, an answer that does not match its request); the latter fail the run.

use std::time::Instant;

use cardgate_codec::{CardNo, DeclineReason, Message};
use serde::Serialize;

/// The request types the load test sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Purchase,
    Reversal,
    Balance,
    Heartbeat,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Purchase, Kind::Reversal, Kind::Balance, Kind::Heartbeat];
    pub const COUNT: usize = Kind::ALL.len();

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Purchase => "purchase",
            Kind::Reversal => "reversal",
            Kind::Balance => "balance",
            Kind::Heartbeat => "heartbeat",
        }
    }
}

/// The share of each request type; purchases take the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Mix {
    /// Percent of requests that reverse one of the terminal's recent approved purchases
    /// (a purchase is sent instead when there is none to reverse).
    pub reversal_pct: u8,
    /// Percent of requests that are balance inquiries.
    pub balance_pct: u8,
    /// Percent of purchases made with a card reported lost during the run, once there
    /// is one: the check that lost cards are refused everywhere.
    pub lost_probe_pct: u8,
}

impl Mix {
    pub fn validate(&self) -> Result<(), String> {
        if u16::from(self.reversal_pct) + u16::from(self.balance_pct) > 100 {
            return Err("--reversal-pct plus --balance-pct must not exceed 100".into());
        }
        if self.lost_probe_pct > 100 {
            return Err("--lost-probe-pct must not exceed 100".into());
        }
        Ok(())
    }

    /// The request type for a uniform draw `roll` in `0..100`.
    pub fn pick(&self, roll: u8) -> Kind {
        if roll < self.reversal_pct {
            Kind::Reversal
        } else if roll < self.reversal_pct.saturating_add(self.balance_pct) {
            Kind::Balance
        } else {
            Kind::Purchase
        }
    }
}

/// A request on its way: what was asked, and when.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    pub kind: Kind,
    pub request_id: u32,
    /// The transaction sequence number (0 for inquiries and heartbeats).
    pub seq: u64,
    pub original_seq: u64,
    pub card: CardNo,
    pub amount_fen: i64,
    /// When the request was due. Latency counts from here, so a gateway (or a load
    /// generator) that falls behind cannot hide it: no coordinated omission.
    pub scheduled: Instant,
    pub sent: Instant,
    /// Due inside the measured window (after ramp-up, before the deadline).
    pub measured: bool,
    /// The card had been reported lost, and the report acknowledged, before this was sent.
    pub card_lost_acked: bool,
}

/// An answer as the report counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AnswerCode {
    Approved,
    Balance,
    HeartbeatAck,
    Declined(DeclineReason),
    /// A message type that does not answer this request.
    Other(u8),
}

impl AnswerCode {
    pub fn name(&self) -> String {
        match self {
            AnswerCode::Approved => "approved".into(),
            AnswerCode::Balance | AnswerCode::HeartbeatAck => "ok".into(),
            AnswerCode::Declined(r) => format!("declined:{}", r.as_str()),
            AnswerCode::Other(t) => format!("unexpected_type:{t:#04x}"),
        }
    }
}

/// What an answer did: money it says moved, and whether the run may accept it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub code: AnswerCode,
    /// Fen a purchase approval debited.
    pub debited_fen: i64,
    /// Fen a reversal approval refunded.
    pub refunded_fen: i64,
    /// Why this answer fails the run, if it does. An approval can move money and still
    /// fail the run (a lost card approved), so this is not exclusive with the amounts.
    pub problem: Option<&'static str>,
}

/// Declines that a healthy gateway gives a purchase in normal business.
fn business_decline(r: DeclineReason) -> bool {
    matches!(
        r,
        DeclineReason::InsufficientFunds
            | DeclineReason::OverSingleLimit
            | DeclineReason::OverDailyLimit
            | DeclineReason::CardLost
            | DeclineReason::CardFrozen
            | DeclineReason::CardCancelled
            | DeclineReason::CardExpired
            | DeclineReason::CardReplaced
            | DeclineReason::CardBad
            | DeclineReason::AccountBlocked
    )
}

fn code_of(m: &Message) -> AnswerCode {
    match m {
        Message::Approved(_) => AnswerCode::Approved,
        Message::Balance(_) => AnswerCode::Balance,
        Message::HeartbeatAck(_) => AnswerCode::HeartbeatAck,
        Message::Declined(d) => AnswerCode::Declined(d.reason),
        other => AnswerCode::Other(other.msg_type()),
    }
}

/// Judges one answer against the request it answers.
pub fn classify(sent: &Sent, answer: &Message) -> Verdict {
    let code = code_of(answer);
    let mut v = Verdict {
        code,
        debited_fen: 0,
        refunded_fen: 0,
        problem: None,
    };
    let matches_request = |tx_seq: u64, card: CardNo| tx_seq == sent.seq && card == sent.card;
    match (sent.kind, answer) {
        (Kind::Purchase, Message::Approved(a)) => {
            if !matches_request(a.tx_seq, a.card) || a.amount_fen != sent.amount_fen || a.balance_fen < 0 {
                v.problem = Some("answer_mismatch");
            }
            // Counted as moved even when the approval is wrong: the gateway made it
            // durable, so the balances reflect it.
            v.debited_fen = a.amount_fen;
            if sent.card_lost_acked {
                v.problem = Some("lost_card_approved");
            }
        }
        (Kind::Purchase, Message::Declined(d)) => {
            if !matches_request(d.tx_seq, d.card) {
                v.problem = Some("answer_mismatch");
            } else if d.reason == DeclineReason::SystemError {
                v.problem = Some("system_error");
            } else if !business_decline(d.reason) {
                v.problem = Some("unexpected_decline");
            } else if sent.card_lost_acked && d.reason != DeclineReason::CardLost {
                v.problem = Some("lost_card_not_refused_as_lost");
            }
        }
        (Kind::Reversal, Message::Approved(a)) => {
            if !matches_request(a.tx_seq, a.card) || a.amount_fen != sent.amount_fen {
                v.problem = Some("answer_mismatch");
            }
            v.refunded_fen = a.amount_fen;
        }
        (Kind::Reversal, Message::Declined(d)) => {
            // The load test reverses only its own recent approved purchases, once each:
            // any decline is a bug on one side or the other.
            v.problem = Some(if d.reason == DeclineReason::SystemError {
                "system_error"
            } else {
                "unexpected_decline"
            });
        }
        (Kind::Balance, Message::Balance(b)) => {
            if b.card != sent.card {
                v.problem = Some("answer_mismatch");
            }
        }
        (Kind::Balance, Message::Declined(d)) => {
            v.problem = Some(if d.reason == DeclineReason::SystemError {
                "system_error"
            } else {
                "unexpected_decline"
            });
        }
        (Kind::Heartbeat, Message::HeartbeatAck(_)) => {}
        _ => v.problem = Some("unexpected_message"),
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use cardgate_codec::{Approved, Balance, CardStatusCode, Declined};

    fn sent(kind: Kind) -> Sent {
        let now = Instant::now();
        Sent {
            kind,
            request_id: 7,
            seq: if matches!(kind, Kind::Purchase | Kind::Reversal) {
                5
            } else {
                0
            },
            original_seq: if kind == Kind::Reversal { 3 } else { 0 },
            card: CardNo(1_000_000_001),
            amount_fen: 12_50,
            scheduled: now,
            sent: now,
            measured: true,
            card_lost_acked: false,
        }
    }

    fn approved(s: &Sent) -> Message {
        Message::Approved(Approved {
            tx_seq: s.seq,
            tx_id: 1,
            card: s.card,
            amount_fen: s.amount_fen,
            balance_fen: 50_00,
            time_ms: 0,
        })
    }

    fn declined(s: &Sent, reason: DeclineReason) -> Message {
        Message::Declined(Declined {
            tx_seq: s.seq,
            card: s.card,
            reason,
            balance_fen: 0,
            time_ms: 0,
        })
    }

    #[test]
    fn the_mix_splits_a_hundred_rolls_by_percent() {
        let m = Mix {
            reversal_pct: 5,
            balance_pct: 10,
            lost_probe_pct: 0,
        };
        let picks: Vec<Kind> = (0..100).map(|r| m.pick(r)).collect();
        assert_eq!(picks.iter().filter(|k| **k == Kind::Reversal).count(), 5);
        assert_eq!(picks.iter().filter(|k| **k == Kind::Balance).count(), 10);
        assert_eq!(picks.iter().filter(|k| **k == Kind::Purchase).count(), 85);
        assert!(
            Mix {
                reversal_pct: 60,
                balance_pct: 50,
                lost_probe_pct: 0
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn approvals_move_money_and_business_declines_are_expected() {
        let p = sent(Kind::Purchase);
        let v = classify(&p, &approved(&p));
        assert_eq!((v.debited_fen, v.refunded_fen, v.problem), (12_50, 0, None));
        let v = classify(&p, &declined(&p, DeclineReason::InsufficientFunds));
        assert_eq!((v.debited_fen, v.problem), (0, None));
        assert_eq!(v.code.name(), "declined:insufficient_funds");
        let r = sent(Kind::Reversal);
        let v = classify(&r, &approved(&r));
        assert_eq!((v.debited_fen, v.refunded_fen, v.problem), (0, 12_50, None));
    }

    #[test]
    fn system_errors_bug_declines_and_mismatches_fail_the_run() {
        let p = sent(Kind::Purchase);
        assert_eq!(
            classify(&p, &declined(&p, DeclineReason::SystemError)).problem,
            Some("system_error")
        );
        assert_eq!(
            classify(&p, &declined(&p, DeclineReason::Duplicate)).problem,
            Some("unexpected_decline")
        );
        let r = sent(Kind::Reversal);
        assert_eq!(
            classify(&r, &declined(&r, DeclineReason::OriginalNotFound)).problem,
            Some("unexpected_decline")
        );
        let mut other = p;
        other.seq = 6;
        let v = classify(&p, &approved(&other));
        assert_eq!(v.problem, Some("answer_mismatch"));
        // The money still counts: the gateway says it moved.
        assert_eq!(v.debited_fen, 12_50);
        let b = sent(Kind::Balance);
        assert_eq!(classify(&b, &approved(&p)).problem, Some("unexpected_message"));
    }

    #[test]
    fn a_card_reported_lost_must_be_refused_as_lost() {
        let mut p = sent(Kind::Purchase);
        p.card_lost_acked = true;
        assert_eq!(classify(&p, &declined(&p, DeclineReason::CardLost)).problem, None);
        let v = classify(&p, &approved(&p));
        assert_eq!(v.problem, Some("lost_card_approved"));
        assert_eq!(v.debited_fen, 12_50);
        assert_eq!(
            classify(&p, &declined(&p, DeclineReason::InsufficientFunds)).problem,
            Some("lost_card_not_refused_as_lost")
        );
    }

    #[test]
    fn balance_answers_must_name_the_card() {
        let b = sent(Kind::Balance);
        let answer = |card| {
            Message::Balance(Balance {
                card,
                status: CardStatusCode::Active,
                balance_fen: 1,
                spent_today_fen: 0,
                daily_limit_fen: 1,
            })
        };
        assert_eq!(classify(&b, &answer(b.card)).problem, None);
        assert_eq!(classify(&b, &answer(CardNo(2))).problem, Some("answer_mismatch"));
    }
}
