//! Terminals as the sessions see them: the sign-on lookup, the last contact, the
//! connections a terminal has open, the blacklist it says it holds, the pages that
//! bring it up to date, and how far the connected fleet is behind.

use cardgate_codec::Message;
use cardgate_domain::entry::EntryBody;
use cardgate_domain::model::{SessionEvent, Terminal};

use crate::blacklist::{BlacklistLag, LAG_LIST_MAX};
use crate::error::LedgerError;
use crate::ledger::Ledger;
use crate::records::{StateWrite, Writes};
use crate::txn::{Pending, Txn};

impl Ledger {
    /// Records the time of the terminal's last authenticated contact.
    pub fn touch_terminal(&self, terminal_id: u64) {
        let now = self.now_ms();
        if let Some(mut t) = self.state.terminal_mut(terminal_id) {
            t.last_seen_ms = now;
        }
    }

    /// A connection of this terminal signed on, its clock `drift_ms` off the gateway's.
    /// The first of its sessions records the sign-on in the journal (time online and
    /// clock drift for the completeness report); not awaited, since it decides nothing.
    pub async fn session_opened(&self, terminal_id: u64, drift_ms: i64) {
        let Ok(txn) = Txn::begin(self.journal()).await else {
            return;
        };
        let now = self.now_ms();
        let Some(mut t) = self.state.terminal_mut(terminal_id) else {
            return;
        };
        t.sessions = t.sessions.saturating_add(1);
        t.drift_ms = drift_ms;
        if t.sessions > 1 {
            return;
        }
        t.online_since_ms = Some(now);
        t.offline_since_ms = None;
        let event = SessionEvent {
            terminal: terminal_id,
            opened: true,
            drift_ms,
            since_ms: now,
        };
        drop(txn.send((), now, EntryBody::TerminalSession(event), Writes::new(), 0));
    }

    /// A connection of this terminal closed; the last one records the end of its time
    /// online.
    pub async fn session_closed(&self, terminal_id: u64) {
        let Ok(txn) = Txn::begin(self.journal()).await else {
            return;
        };
        let now = self.now_ms();
        let Some(mut t) = self.state.terminal_mut(terminal_id) else {
            return;
        };
        t.sessions = t.sessions.saturating_sub(1);
        if t.sessions > 0 {
            return;
        }
        let since = t.online_since_ms.take().unwrap_or(now);
        t.offline_since_ms = Some(now);
        let event = SessionEvent {
            terminal: terminal_id,
            opened: false,
            drift_ms: 0,
            since_ms: since,
        };
        drop(txn.send((), now, EntryBody::TerminalSession(event), Writes::new(), 0));
    }

    /// A terminal says it holds `version` (BLACKLIST_ACK or HEARTBEAT). Returns whether
    /// the version is believed. A version above every version this gateway has issued
    /// (a terminal that kept its list across a restore of the gateway's data, or a
    /// faulty one) names a list this gateway never sent: the terminal is recorded as
    /// holding none of ours (0), so that it shows as behind, not as up to date, until it
    /// syncs (a SYNC from such a version gets the full list). A terminal may go back (it
    /// lost its list); that is believed.
    pub fn blacklist_ack(&self, terminal_id: u64, version: u64) -> bool {
        // Read before the terminal's lock, which comes before the blacklist's.
        let believed = version <= self.state.blacklist().version();
        if let Some(mut t) = self.state.terminal_mut(terminal_id) {
            t.blacklist_acked = if believed { version } else { 0 };
        }
        believed
    }

    /// The blacklist acknowledged by a terminal and whether it is connected.
    pub fn terminal_blacklist(&self, terminal_id: u64) -> Option<(u64, bool)> {
        self.state
            .terminal(terminal_id)
            .map(|t| (t.blacklist_acked, t.sessions > 0))
    }

    /// Answers a BLACKLIST_SYNC: the pages, the first of which waits for a barrier so
    /// that no version is sent before it is durable (the rest follow it in order).
    pub async fn blacklist_sync(&self, since_version: u64, after_card: u64) -> Vec<Pending> {
        let Ok(txn) = Txn::begin(self.journal()).await else {
            // A refusing journal is ERROR server_error (request id 0, the connection
            // closed), not silence the terminal would wait on.
            return vec![Pending::ready(Message::Error(cardgate_codec::ErrorFrame {
                code: cardgate_codec::ErrorCode::ServerError,
                detail: 0,
            }))];
        };
        let mut pages = self.state.blacklist().sync(since_version, after_card).into_iter();
        let mut out = Vec::with_capacity(pages.len());
        if let Some(first) = pages.next() {
            out.push(txn.barrier(Message::BlacklistPage(first)).into());
        }
        out.extend(pages.map(|p| Pending::ready(Message::BlacklistPage(p))));
        metrics::counter!("cardgate_blacklist_syncs_total").increment(1);
        out
    }

    /// How many connected terminals are behind, and by how much.
    pub fn blacklist_lag(&self) -> BlacklistLag {
        let bl = self.state.blacklist();
        let published = bl.published();
        let mut lag = BlacklistLag {
            version: bl.version(),
            published,
            listed: bl.len(),
            delta_floor: bl.delta_floor(),
            ..Default::default()
        };
        let mut behind = Vec::new();
        self.state.for_each_terminal(|t| {
            if t.sessions == 0 {
                return;
            }
            lag.connected_terminals += 1;
            if t.blacklist_acked < published {
                let by = published - t.blacklist_acked;
                lag.behind += 1;
                lag.max_versions_behind = lag.max_versions_behind.max(by);
                lag.behind_by[match by {
                    1 => 0,
                    2..=10 => 1,
                    11..=100 => 2,
                    _ => 3,
                }] += 1;
                behind.push((t.info.id, t.blacklist_acked));
            }
        });
        behind.sort_by_key(|(id, v)| (*v, *id));
        behind.truncate(LAG_LIST_MAX);
        lag.furthest = behind;
        lag
    }

    /// Registers a terminal or replaces its registration (keeping its sequence memory)
    /// as data directories before the registry did: a `TerminalRegistered` entry with the
    /// secret in clear. For tests and old-format fixtures only; the daemon registers
    /// terminals through `register_terminal_new` (sealed), and nothing it serves calls
    /// this.
    pub async fn register_terminal_unsealed(&self, t: Terminal) -> Result<u64, LedgerError> {
        let txn = Txn::begin(self.journal()).await?;
        let sent = {
            let _desk = self.state.desk_lock();
            let mut records = Writes::new();
            records.push(StateWrite::Terminal(Box::new(t.clone())));
            let sent = txn.send((), self.now_ms(), EntryBody::TerminalRegistered(t.clone()), records, 0);
            self.state.put_terminal(t);
            sent
        };
        Ok(sent.durable().await?.1)
    }
}
