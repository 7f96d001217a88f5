//! The card lifecycle: which status each desk action leads to, and which statuses put
//! a card on the blacklist.

use crate::Refusal;
use crate::entry::CardAction;
use crate::model::CardStatus;

/// The status `action` moves a card in status `from` to, or why it may not.
pub fn transition(from: CardStatus, action: CardAction) -> Result<CardStatus, Refusal> {
    use CardStatus::*;
    let to = match (action, from) {
        (CardAction::Lost, Active | Frozen) => Lost,
        (CardAction::Unfreeze, Lost | Frozen) => Active,
        (CardAction::Freeze, Active) => Frozen,
        (CardAction::Bad, Active | Lost | Frozen) => Bad,
        (CardAction::Replace, Active | Lost | Frozen | Bad) => Replaced,
        (CardAction::Cancel, Active | Lost | Frozen | Bad) => Cancelled,
        (action, from) => {
            return Err(Refusal(format!(
                "a card that is {} cannot be {}",
                from.as_str(),
                match action {
                    CardAction::Lost => "reported lost",
                    CardAction::Unfreeze => "unfrozen",
                    CardAction::Freeze => "frozen",
                    CardAction::Bad => "recorded as bad",
                    CardAction::Replace => "replaced",
                    CardAction::Cancel => "cancelled",
                    CardAction::Issue => "issued",
                }
            )));
        }
    };
    Ok(to)
}

/// A card may be issued with an expiry only if it is still valid after issue:
/// `expires_ms` (the end of the expiry date's local day) must lie after `now_ms`.
pub fn check_expiry(expires_ms: Option<i64>, now_ms: i64) -> Result<(), Refusal> {
    match expires_ms {
        Some(exp) if exp <= now_ms => Err(Refusal(
            "the card would be expired when issued: its expiry date must be today or later".into(),
        )),
        _ => Ok(()),
    }
}

/// Whether a card in this status belongs on the blacklist.
pub fn listed(status: CardStatus) -> bool {
    status != CardStatus::Active
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [CardStatus; 6] = [
        CardStatus::Active,
        CardStatus::Lost,
        CardStatus::Frozen,
        CardStatus::Cancelled,
        CardStatus::Replaced,
        CardStatus::Bad,
    ];

    #[test]
    fn final_statuses_admit_no_action() {
        for action in [
            CardAction::Lost,
            CardAction::Unfreeze,
            CardAction::Freeze,
            CardAction::Bad,
            CardAction::Replace,
            CardAction::Cancel,
        ] {
            for from in [CardStatus::Cancelled, CardStatus::Replaced] {
                assert!(transition(from, action).is_err(), "{action:?} from {from:?}");
            }
        }
    }

    #[test]
    fn every_transition_lands_on_a_status_whose_listing_matches_its_use() {
        for from in ALL {
            for action in [
                CardAction::Lost,
                CardAction::Unfreeze,
                CardAction::Freeze,
                CardAction::Bad,
                CardAction::Replace,
                CardAction::Cancel,
            ] {
                if let Ok(to) = transition(from, action) {
                    assert_eq!(listed(to), to.refusal().is_some(), "{from:?} --{action:?}--> {to:?}");
                }
            }
        }
        assert_eq!(
            transition(CardStatus::Lost, CardAction::Unfreeze).unwrap(),
            CardStatus::Active
        );
    }
}
