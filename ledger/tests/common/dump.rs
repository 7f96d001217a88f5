//! Everything a ledger holds that a test can read through its public API, as JSON: two
//! ledgers with equal dumps answer every question alike. Shared by the test that
//! recovers a data directory written by an older build and by the example that wrote it.

use cardgate_codec::CardNo;
use cardgate_ledger::Ledger;
use cardgate_ledger::audit::AuditQuery;
use cardgate_ledger::history::HistoryQuery;
use serde_json::{Value, json};

/// What the fixture's ledger holds: the ids the dump walks.
pub struct Scope {
    pub accounts: std::ops::RangeInclusive<u64>,
    pub cards: Vec<u64>,
    pub terminals: Vec<u64>,
    pub persons: Vec<String>,
}

pub fn dump(l: &Ledger, scope: &Scope) -> Value {
    let accounts: Vec<Value> = scope
        .accounts
        .clone()
        .map(|id| json!({ "id": id, "account": l.account(id), "person": l.person_of_account(id) }))
        .collect();
    let cards: Vec<Value> = scope
        .cards
        .iter()
        .map(|no| {
            json!({
                "no": no,
                "card": l.card(CardNo(*no)),
                "blacklisted": l.blacklist().contains(CardNo(*no)),
            })
        })
        .collect();
    let terminals: Vec<Value> = scope
        .terminals
        .iter()
        .map(|id| {
            json!({
                "id": id,
                "terminal": l.terminal(*id),
                "last_seq": l.sign_on_secrets(*id).map(|s| s.last_seq),
            })
        })
        .collect();
    let persons: Vec<Value> = scope.persons.iter().map(|p| json!(l.person(p))).collect();
    let operators: Vec<Value> = l.operators().iter().map(|o| json!(o)).collect();
    let audit: Vec<Value> = l
        .audit_list(&AuditQuery {
            limit: 10_000,
            ..Default::default()
        })
        .iter()
        .map(|r| json!(r))
        .collect();
    // The fields a history row had in the build that wrote the old data directory;
    // fields added since are not part of what it must recover.
    const ROW_FIELDS: [&str; 21] = [
        "account",
        "amount_fen",
        "balance_after_fen",
        "blacklist_version",
        "card",
        "daily_limit_fen",
        "decline_reason",
        "entry_id",
        "kind",
        "merchant",
        "operator",
        "original_seq",
        "outcome",
        "reason",
        "seq",
        "single_limit_fen",
        "spent_today_after_fen",
        "terminal",
        "terminal_time_ms",
        "time_ms",
        "tx_id",
    ];
    let history = |q: HistoryQuery| {
        let h = l.history(q).expect("history reads the journal");
        let rows: Vec<Value> = h
            .rows
            .iter()
            .map(|r| {
                let mut v = json!(r);
                if let Some(o) = v.as_object_mut() {
                    o.retain(|k, _| ROW_FIELDS.contains(&k.as_str()));
                }
                v
            })
            .collect();
        json!({ "complete": h.complete, "rows": rows })
    };
    let all_time = |q: HistoryQuery| HistoryQuery {
        from_ms: 0,
        to_ms: i64::MAX / 2,
        ..q
    };
    let (added, removed, version) = l.blacklist().changes_since(0).unwrap_or_default();
    json!({
        "counts": l.counts(),
        "total_balance": l.total_balance().to_string(),
        "params": l.params(),
        "accounts": accounts,
        "cards": cards,
        "terminals": terminals,
        "persons": persons,
        "operators": operators,
        "audit": audit,
        "blacklist": {
            "version": l.blacklist().version(),
            "listed": l.blacklist().len(),
            "changes_since_0": { "added": added, "removed": removed, "version": version },
        },
        "history_account_1": history(all_time(HistoryQuery { account: Some(1), ..Default::default() })),
        "history_account_21": history(all_time(HistoryQuery { account: Some(21), ..Default::default() })),
        "history_card_103": history(all_time(HistoryQuery { card: Some(CardNo(103)), ..Default::default() })),
    })
}
