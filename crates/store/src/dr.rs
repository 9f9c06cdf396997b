//! Accepted DR events, by (issuer, id): kept durably before the gateway answers the issuer,
//! so that an accepted event survives a restart and a replay is refused for all time.

use redb::{ReadableTable, TableDefinition};

use super::{Store, StoreError, db};

/// Event key (`dr::event_key`) → encoded `gridgate.v1.EventStatus`.
pub(super) const DR_EVENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("dr_events");

/// Loads under manual override → why.
pub(super) const DR_OVERRIDES: TableDefinition<&str, &str> = TableDefinition::new("dr_overrides");

/// Keys of the events the relay still has work on (not yet ended and reported), so that its
/// passes do not read the whole history.
pub(super) const DR_OPEN: TableDefinition<&str, ()> = TableDefinition::new("dr_open");

/// Event key → encoded `gridgate.v1.SignedPerformanceReport`, written once when the event's
/// measurement is done.
pub(super) const DR_REPORTS: TableDefinition<&str, &[u8]> = TableDefinition::new("dr_reports");

/// The DR tables: events' records and which are open, performance reports, manual overrides.
pub struct DrTables<'a>(&'a Store);

impl Store {
    /// The DR tables.
    pub fn dr(&self) -> DrTables<'_> {
        DrTables(self)
    }
}

impl DrTables<'_> {
    /// Stores an event's signed performance report (once; a second one for the same event is
    /// ignored, so a report once offered never changes).
    pub fn put_report(&self, key: &str, report: &[u8]) -> Result<(), StoreError> {
        let txn = self.0.begin_write()?;
        {
            let mut t = txn.open_table(DR_REPORTS).map_err(db)?;
            if t.get(key).map_err(db)?.is_none() {
                t.insert(key, report).map_err(db)?;
            }
        }
        txn.commit().map_err(db)
    }

    /// An event's signed performance report, once written.
    pub fn report(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.0.begin_read()?;
        let t = txn.open_table(DR_REPORTS).map_err(db)?;
        Ok(t.get(key).map_err(db)?.map(|v| v.value().to_vec()))
    }

    /// Sets (with its reason) or clears a load's manual override, durably.
    pub fn set_override(&self, load: &str, reason: Option<&str>) -> Result<(), StoreError> {
        let txn = self.0.begin_write()?;
        {
            let mut t = txn.open_table(DR_OVERRIDES).map_err(db)?;
            match reason {
                Some(r) => {
                    t.insert(load, r).map_err(db)?;
                }
                None => {
                    t.remove(load).map_err(db)?;
                }
            }
        }
        txn.commit().map_err(db)
    }

    /// The loads under manual override.
    pub fn overrides(&self) -> Result<std::collections::BTreeSet<String>, StoreError> {
        let txn = self.0.begin_read()?;
        let t = txn.open_table(DR_OVERRIDES).map_err(db)?;
        let mut out = std::collections::BTreeSet::new();
        for entry in t.iter().map_err(db)? {
            let (k, _) = entry.map_err(db)?;
            out.insert(k.value().to_string());
        }
        Ok(out)
    }

    /// Stores an event unless one with the same key is there, in one durable transaction;
    /// false when it was there (a replay, even one racing this call).
    pub fn insert_new(&self, key: &str, record: &[u8]) -> Result<bool, StoreError> {
        let txn = self.0.begin_write()?;
        {
            let mut t = txn.open_table(DR_EVENTS).map_err(db)?;
            if t.get(key).map_err(db)?.is_some() {
                return Ok(false);
            }
            t.insert(key, record).map_err(db)?;
            txn.open_table(DR_OPEN)
                .map_err(db)?
                .insert(key, ())
                .map_err(db)?;
        }
        txn.commit().map_err(db)?;
        Ok(true)
    }

    /// Replaces an event's record (its state moved).
    pub fn update(&self, key: &str, record: &[u8]) -> Result<(), StoreError> {
        let txn = self.0.begin_write()?;
        {
            let mut t = txn.open_table(DR_EVENTS).map_err(db)?;
            t.insert(key, record).map_err(db)?;
        }
        txn.commit().map_err(db)
    }

    /// Marks events open (`open`) or done with (`!open`): the relay's working set.
    pub fn set_open(&self, keys: &[String], open: bool) -> Result<(), StoreError> {
        let txn = self.0.begin_write()?;
        {
            let mut t = txn.open_table(DR_OPEN).map_err(db)?;
            for k in keys {
                if open {
                    t.insert(k.as_str(), ()).map_err(db)?;
                } else {
                    t.remove(k.as_str()).map_err(db)?;
                }
            }
        }
        txn.commit().map_err(db)
    }

    /// The records of the open events, in key order.
    pub fn open_events(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.0.begin_read()?;
        let open = txn.open_table(DR_OPEN).map_err(db)?;
        let t = txn.open_table(DR_EVENTS).map_err(db)?;
        let mut out = Vec::new();
        for entry in open.iter().map_err(db)? {
            let (k, _) = entry.map_err(db)?;
            if let Some(v) = t.get(k.value()).map_err(db)? {
                out.push((k.value().to_string(), v.value().to_vec()));
            }
        }
        Ok(out)
    }

    /// One event's record.
    pub fn event(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.0.begin_read()?;
        let t = txn.open_table(DR_EVENTS).map_err(db)?;
        Ok(t.get(key).map_err(db)?.map(|v| v.value().to_vec()))
    }

    /// Every event's record, in key order.
    pub fn events(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.0.begin_read()?;
        let t = txn.open_table(DR_EVENTS).map_err(db)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(db)? {
            let (k, v) = entry.map_err(db)?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_stored_once_and_survives_reopening() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path(), "gw").expect("open");
        assert!(store.dr().insert_new("op\0e1", b"first").expect("insert"));
        assert!(!store.dr().insert_new("op\0e1", b"second").expect("insert"));
        drop(store);
        let store = Store::open(dir.path(), "gw").expect("reopen");
        assert_eq!(
            store.dr().event("op\0e1").expect("get").as_deref(),
            Some(&b"first"[..])
        );
        store.dr().update("op\0e1", b"moved").expect("update");
        assert_eq!(store.dr().events().expect("all").len(), 1);
        assert_eq!(store.dr().event("nope").expect("get"), None);
    }
}
