//! How one batch is written, for every back end: one SQL transaction that reads and
//! locks the gateway's cursor, refuses a batch that would leave a gap, writes nothing
//! for a batch the store already holds, refuses one whose hash of the store's last entry
//! is not the one the store holds (`CentralError::Diverged`, `integrity.rs`), writes the
//! rows of the entries after the cursor (their entry hashes and day closes with them),
//! moves the cursor to the batch's last entry, and commits. A crash at any point leaves
//! either the old cursor and no rows of the batch, or both.
//!
//! Rows and cursor move together, so with the cursor locked at `c` the store holds the
//! rows of every entry up to `c` and of none after it. A batch that overlaps what the
//! store holds (an acknowledgement lost, a crash before sled heard of the commit) thus
//! needs only the rows of its entries after `c`, and those can be plain inserts (a bulk
//! `COPY` on PostgreSQL): a row found there anyway was put there by something other than
//! this gateway's flusher, and the insert is refused (`CentralError::Refused`, the entry
//! named) rather than silently skipped. The current-value tables (accounts, cards,
//! terminals) take a write only from a later entry, so writing them again is harmless.
//! The dialects (`sqlite.rs`, `postgres.rs`) only say how to lock, write and move.

use sqlx::Transaction;

use crate::CentralError;
use crate::schema::Batch;

/// The parts of writing a batch that differ between back ends.
pub(crate) trait Dialect {
    type Db: sqlx::Database;

    /// Opens the batch's transaction, taking the write lock where the back end needs it
    /// up front.
    async fn begin(&self) -> Result<Transaction<'static, Self::Db>, CentralError>;
    /// The last entry id of the gateway that the store holds (0 for none), locked until
    /// the transaction ends.
    async fn lock_cursor(
        tx: &mut Transaction<'static, Self::Db>,
        gateway_id: u64,
        now_ms: i64,
    ) -> Result<u64, CentralError>;
    /// Writes the rows of the batch's entries after `central` (the cursor just locked),
    /// and the current values it leaves.
    async fn write_rows(
        tx: &mut Transaction<'static, Self::Db>,
        batch: &Batch,
        central: u64,
    ) -> Result<(), CentralError>;
    /// The chain hash the store holds for one of the gateway's entries.
    async fn stored_hash(
        tx: &mut Transaction<'static, Self::Db>,
        gateway_id: u64,
        entry_id: u64,
    ) -> Result<Option<[u8; 32]>, CentralError>;
    async fn set_cursor(
        tx: &mut Transaction<'static, Self::Db>,
        batch: &Batch,
        now_ms: i64,
    ) -> Result<(), CentralError>;
}

/// What to do with a batch, given the store's cursor `central`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Write it: it starts at or before `central + 1` and ends after `central`.
    Write,
    /// The store holds all of it already (the acknowledgement was lost): nothing to do.
    AlreadyHeld,
}

/// The exactly-once rule, the one place it is decided.
pub fn plan(central: u64, batch: &Batch) -> Result<Plan, CentralError> {
    assert!(!batch.is_empty(), "an empty batch is never written");
    if central + 1 < batch.first_entry_id {
        return Err(CentralError::Gap {
            central,
            first: batch.first_entry_id,
        });
    }
    if central >= batch.last_entry_id {
        return Ok(Plan::AlreadyHeld);
    }
    Ok(Plan::Write)
}

/// This journal's hash of the store's last entry `central`, as the batch knows it: its
/// own entry, or the one just before it. `None` when it has none (an entry from before
/// the chain, or the store is empty).
pub fn our_hash_at(central: u64, batch: &Batch) -> Option<[u8; 32]> {
    if central == 0 {
        return None;
    }
    if central + 1 == batch.first_entry_id {
        return batch.prev_hash;
    }
    batch.hashes.iter().find(|(id, _)| *id == central).map(|(_, h)| *h)
}

fn diverged(entry_id: u64, central: &[u8; 32], journal: &[u8; 32]) -> CentralError {
    let hex = |h: &[u8; 32]| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
    CentralError::Diverged {
        entry_id,
        central: hex(central),
        journal: hex(journal),
    }
}

/// Writes `batch` in one transaction; returns the store's cursor after it.
pub(crate) async fn write<D: Dialect>(d: &D, batch: &Batch, now_ms: i64) -> Result<u64, CentralError> {
    let mut tx = d.begin().await?;
    let central = D::lock_cursor(&mut tx, batch.gateway_id, now_ms).await?;
    match plan(central, batch)? {
        // Dropping the transaction rolls it back.
        Plan::AlreadyHeld => return Ok(central),
        Plan::Write => {}
    }
    if let Some(ours) = our_hash_at(central, batch) {
        let theirs = D::stored_hash(&mut tx, batch.gateway_id, central).await?;
        if let Some(theirs) = theirs
            && theirs != ours
        {
            return Err(diverged(central, &theirs, &ours));
        }
    }
    D::write_rows(&mut tx, batch, central).await?;
    D::set_cursor(&mut tx, batch, now_ms).await?;
    tx.commit().await.map_err(crate::classify)?;
    Ok(batch.last_entry_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(first: u64, last: u64) -> Batch {
        let mut b = Batch::default();
        b.gateway_id = 1;
        b.first_entry_id = first;
        b.last_entry_id = last;
        b
    }

    #[test]
    fn a_batch_is_written_once_and_never_past_a_gap() {
        assert_eq!(plan(0, &batch(1, 10)).unwrap(), Plan::Write);
        assert_eq!(plan(10, &batch(11, 20)).unwrap(), Plan::Write);
        // Overlapping what the store holds: written, but only the rows of its entries
        // after 15 (`Dialect::write_rows`).
        assert_eq!(plan(15, &batch(11, 20)).unwrap(), Plan::Write);
        assert_eq!(plan(20, &batch(11, 20)).unwrap(), Plan::AlreadyHeld);
        assert_eq!(plan(25, &batch(11, 20)).unwrap(), Plan::AlreadyHeld);
        assert!(matches!(
            plan(9, &batch(11, 20)),
            Err(CentralError::Gap { central: 9, first: 11 })
        ));
    }

    #[test]
    fn the_hash_checked_is_the_one_the_batch_has_for_the_stores_last_entry() {
        let mut b = batch(11, 13);
        b.prev_hash = Some([10; 32]);
        b.hashes = vec![(11, [11; 32]), (12, [12; 32]), (13, [13; 32])];
        assert_eq!(our_hash_at(10, &b), Some([10; 32]), "the entry just before the batch");
        assert_eq!(our_hash_at(12, &b), Some([12; 32]), "an entry the store already holds");
        assert_eq!(our_hash_at(0, &b), None, "an empty store holds nothing to link to");
        b.prev_hash = None;
        assert_eq!(our_hash_at(10, &b), None, "an entry from before the chain");
    }
}
