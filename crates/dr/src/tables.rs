//! Accepted DR events, by (issuer, id): kept durably before the gateway answers the issuer,
//! so that an accepted event survives a restart and a replay is refused for all time.

use redb::{ReadableTable, TableDefinition};

use gridgate_store::{Store, StoreError, read_table};

/// Event key (`dr::event_key`) → encoded `gridgate.v1.EventStatus`.
const DR_EVENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("dr_events");

/// Loads under manual override → why.
const DR_OVERRIDES: TableDefinition<&str, &str> = TableDefinition::new("dr_overrides");

/// Keys of the events the relay still has work on (not yet ended and reported), so that its
/// passes do not read the whole history.
const DR_OPEN: TableDefinition<&str, ()> = TableDefinition::new("dr_open");

/// Event key → encoded `gridgate.v1.SignedPerformanceReport`, written once when the event's
/// measurement is done.
const DR_REPORTS: TableDefinition<&str, &[u8]> = TableDefinition::new("dr_reports");

/// The DR tables: events' records and which are open, performance reports, manual overrides.
pub struct DrTables<'a>(&'a Store);

/// DR keeps its tables in the gateway's store: `store.dr()`.
pub trait DrStore {
    /// The DR tables.
    fn dr(&self) -> DrTables<'_>;
}

impl DrStore for Store {
    fn dr(&self) -> DrTables<'_> {
        DrTables(self)
    }
}

impl DrTables<'_> {
    /// Stores an event's signed performance report (once; a second one for the same event is
    /// ignored, so a report once offered never changes).
    pub fn put_report(&self, key: &str, report: &[u8]) -> Result<(), StoreError> {
        let txn = self.0.begin_write()?;
        {
            let mut t = txn.open_table(DR_REPORTS).map_err(StoreError::db)?;
            if t.get(key).map_err(StoreError::db)?.is_none() {
                t.insert(key, report).map_err(StoreError::db)?;
            }
        }
        txn.commit().map_err(StoreError::db)
    }

    /// An event's signed performance report, once written.
    pub fn report(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.0.begin_read()?;
        let Some(t) = read_table(&txn, DR_REPORTS)? else {
            return Ok(Default::default());
        };
        Ok(t.get(key)
            .map_err(StoreError::db)?
            .map(|v| v.value().to_vec()))
    }

    /// Sets (with its reason) or clears a load's manual override, durably.
    pub fn set_override(&self, load: &str, reason: Option<&str>) -> Result<(), StoreError> {
        let txn = self.0.begin_write()?;
        {
            let mut t = txn.open_table(DR_OVERRIDES).map_err(StoreError::db)?;
            match reason {
                Some(r) => {
                    t.insert(load, r).map_err(StoreError::db)?;
                }
                None => {
                    t.remove(load).map_err(StoreError::db)?;
                }
            }
        }
        txn.commit().map_err(StoreError::db)
    }

    /// The loads under manual override.
    pub fn overrides(&self) -> Result<std::collections::BTreeSet<String>, StoreError> {
        let txn = self.0.begin_read()?;
        let Some(t) = read_table(&txn, DR_OVERRIDES)? else {
            return Ok(Default::default());
        };
        let mut out = std::collections::BTreeSet::new();
        for entry in t.iter().map_err(StoreError::db)? {
            let (k, _) = entry.map_err(StoreError::db)?;
            out.insert(k.value().to_string());
        }
        Ok(out)
    }

    /// Stores an event unless one with the same key is there, in one durable transaction;
    /// false when it was there (a replay, even one racing this call).
    pub fn insert_new(&self, key: &str, record: &[u8]) -> Result<bool, StoreError> {
        let txn = self.0.begin_write()?;
        {
            let mut t = txn.open_table(DR_EVENTS).map_err(StoreError::db)?;
            if t.get(key).map_err(StoreError::db)?.is_some() {
                return Ok(false);
            }
            t.insert(key, record).map_err(StoreError::db)?;
            txn.open_table(DR_OPEN)
                .map_err(StoreError::db)?
                .insert(key, ())
                .map_err(StoreError::db)?;
        }
        txn.commit().map_err(StoreError::db)?;
        Ok(true)
    }

    /// Replaces an event's record (its state moved).
    pub fn update(&self, key: &str, record: &[u8]) -> Result<(), StoreError> {
        let txn = self.0.begin_write()?;
        {
            let mut t = txn.open_table(DR_EVENTS).map_err(StoreError::db)?;
            t.insert(key, record).map_err(StoreError::db)?;
        }
        txn.commit().map_err(StoreError::db)
    }

    /// Marks events open (`open`) or done with (`!open`): the relay's working set.
    pub fn set_open(&self, keys: &[String], open: bool) -> Result<(), StoreError> {
        let txn = self.0.begin_write()?;
        {
            let mut t = txn.open_table(DR_OPEN).map_err(StoreError::db)?;
            for k in keys {
                if open {
                    t.insert(k.as_str(), ()).map_err(StoreError::db)?;
                } else {
                    t.remove(k.as_str()).map_err(StoreError::db)?;
                }
            }
        }
        txn.commit().map_err(StoreError::db)
    }

    /// The records of the open events, in key order.
    pub fn open_events(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.0.begin_read()?;
        let Some(open) = read_table(&txn, DR_OPEN)? else {
            return Ok(Default::default());
        };
        let Some(t) = read_table(&txn, DR_EVENTS)? else {
            return Ok(Default::default());
        };
        let mut out = Vec::new();
        for entry in open.iter().map_err(StoreError::db)? {
            let (k, _) = entry.map_err(StoreError::db)?;
            if let Some(v) = t.get(k.value()).map_err(StoreError::db)? {
                out.push((k.value().to_string(), v.value().to_vec()));
            }
        }
        Ok(out)
    }

    /// One event's record.
    pub fn event(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.0.begin_read()?;
        let Some(t) = read_table(&txn, DR_EVENTS)? else {
            return Ok(Default::default());
        };
        Ok(t.get(key)
            .map_err(StoreError::db)?
            .map(|v| v.value().to_vec()))
    }

    /// Every event's record, in key order.
    pub fn events(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.0.begin_read()?;
        let Some(t) = read_table(&txn, DR_EVENTS)? else {
            return Ok(Default::default());
        };
        let mut out = Vec::new();
        for entry in t.iter().map_err(StoreError::db)? {
            let (k, v) = entry.map_err(StoreError::db)?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_dr_never_wrote_to_reads_as_empty() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path(), "gw").expect("open");
        assert!(store.dr().events().expect("events").is_empty());
        assert!(store.dr().open_events().expect("open").is_empty());
        assert!(store.dr().overrides().expect("overrides").is_empty());
        assert_eq!(store.dr().report("op\0e1").expect("report"), None);
        store
            .dr()
            .set_override("pump", Some("repair"))
            .expect("set");
        assert_eq!(store.dr().overrides().expect("overrides").len(), 1);
    }

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
