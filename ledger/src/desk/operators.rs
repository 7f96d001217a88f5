//! Operators and their tokens, and the business parameters they set.

use cardgate_domain::entry::{EntryBody, OperatorEntry, ParamsChange};
use cardgate_domain::model::{AccountKind, Params};
use cardgate_domain::money::{AMOUNT_FEN_MAX, from_fen, to_fen};
use cardgate_domain::operator::{Operator, Role, hash_token, validate_operator_name};

use super::{By, new_token};
use crate::error::LedgerError;
use crate::ledger::Ledger;
use crate::records::{StateWrite, Writes};
use crate::txn::Txn;

fn invalid(msg: impl Into<String>) -> LedgerError {
    LedgerError::Invalid(msg.into())
}

impl Ledger {
    pub fn operators(&self) -> Vec<Operator> {
        self.state.operators()
    }

    pub fn operator(&self, id: u64) -> Option<Operator> {
        self.state.operator(id)
    }

    /// The enabled operator holding `token`, if any.
    pub fn authenticate(&self, token: &str) -> Option<Operator> {
        self.state.operator_by_token(&hash_token(token))
    }

    /// Adds an operator; returns it and its token, which is shown only this once.
    pub async fn add_operator(
        &self,
        by: &By<'_, Operator>,
        name: &str,
        role: Role,
    ) -> Result<(Operator, String), LedgerError> {
        validate_operator_name(name)?;
        let txn = Txn::begin(self.journal()).await?;
        let (token, token_hash) = new_token();
        let sent = {
            let _desk = self.state.desk_lock();
            if self.state.operators().iter().any(|o| o.name == name) {
                return Err(invalid(format!("operator {name} already exists")));
            }
            let now = self.now_ms();
            let op = Operator {
                id: self.state.new_operator_id(),
                name: name.to_string(),
                role,
                token_hash,
                enabled: true,
                created_ms: now,
            };
            let mut writes = Writes::new();
            writes.push(StateWrite::Operator(Box::new(op.clone())));
            let body = EntryBody::OperatorSet(Box::new(OperatorEntry {
                actor: by.actor.clone(),
                operator: op.clone(),
            }));
            let sent = self.send_desk(txn, by, op.clone(), now, body, writes, 0);
            self.state.put_operator(op);
            sent
        };
        let (op, _) = sent.durable().await?;
        Ok((op, token))
    }

    /// Disables an operator: its token stops working at once. Returns it before and
    /// after.
    pub async fn disable_operator(
        &self,
        by: &By<'_, (Operator, Operator)>,
        id: u64,
    ) -> Result<(Operator, Operator), LedgerError> {
        let txn = Txn::begin(self.journal()).await?;
        let sent = {
            let _desk = self.state.desk_lock();
            let before = self
                .state
                .operator(id)
                .ok_or_else(|| LedgerError::not_found("operator", id))?;
            if !before.enabled {
                return Err(invalid(format!("operator {id} is already disabled")));
            }
            let mut after = before.clone();
            after.enabled = false;
            let mut writes = Writes::new();
            writes.push(StateWrite::Operator(Box::new(after.clone())));
            let body = EntryBody::OperatorSet(Box::new(OperatorEntry {
                actor: by.actor.clone(),
                operator: after.clone(),
            }));
            let sent = self.send_desk(txn, by, (before, after.clone()), self.now_ms(), body, writes, 0);
            self.state.put_operator(after);
            sent
        };
        Ok(sent.durable().await?.0)
    }

    /// Replaces the business parameters, effective for the next decision everywhere.
    /// Returns them before and after.
    pub async fn change_params(
        &self,
        by: &By<'_, (Params, Params)>,
        params: Params,
    ) -> Result<(Params, Params), LedgerError> {
        for (kind, p) in AccountKind::ALL.iter().zip(params.kinds.iter()) {
            let k = kind.as_str();
            for (what, v, positive) in [
                ("single_payment_max", p.limits.single_payment_max, true),
                ("daily_max", p.limits.daily_max, true),
                ("replacement_fee", p.replacement_fee, false),
                ("temporary_card_fee", p.temporary_card_fee, false),
            ] {
                let f = to_fen(v).ok_or_else(|| invalid(format!("{k}.{what}: not a whole number of fen")))?;
                if !(0..=AMOUNT_FEN_MAX).contains(&f) || (positive && f == 0) {
                    return Err(invalid(format!(
                        "{k}.{what} must be {} 0 and at most {}",
                        if positive { "above" } else { "at least" },
                        from_fen(AMOUNT_FEN_MAX)
                    )));
                }
            }
            // A single payment above the day's limit could never be made whole: the
            // smaller limit would decide, and the larger one only misleads.
            if p.limits.single_payment_max > p.limits.daily_max {
                return Err(invalid(format!(
                    "{k}.single_payment_max {:.2} is above {k}.daily_max {:.2}",
                    p.limits.single_payment_max, p.limits.daily_max
                )));
            }
        }
        let txn = Txn::begin(self.journal()).await?;
        let sent = {
            let _desk = self.state.desk_lock();
            let before = **self.state.params();
            let mut writes = Writes::new();
            writes.push(StateWrite::Params(Box::new(params)));
            let body = EntryBody::ParamsChanged(Box::new(ParamsChange {
                actor: by.actor.clone(),
                params,
            }));
            let sent = self.send_desk(txn, by, (before, params), self.now_ms(), body, writes, 0);
            self.state.set_params(params);
            sent
        };
        Ok(sent.durable().await?.0)
    }
}
