//! What the VEN keeps in the gateway's store: each VTN event it has seen and what became of
//! it, the reports waiting for the VTN (in the order they are to be posted, each once), and
//! its status for `gridgate openadr status`. All survive a restart: a VTN event is acted on
//! once, and a report made while the VTN was away is posted when it is back.

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use gridgate_store::{Store, StoreError, read_table};

/// VTN event id → [`Seen`] as JSON.
const EVENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("openadr_events");
/// Sequence → [`Outgoing`] as JSON: the reports not yet posted, oldest first.
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("openadr_outbox");
/// "status" → [`Status`] as JSON.
const STATUS: TableDefinition<&str, &[u8]> = TableDefinition::new("openadr_status");

/// One interval of a VTN event as the gateway scheduled it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scheduled {
    /// The interval's id in the VTN event.
    pub interval_id: i32,
    /// The gateway's DR event id (`<vtn event id>/<generation>/<interval id>`).
    pub dr_id: String,
    /// Start and end, ms since the epoch.
    pub start_ms: i64,
    pub end_ms: i64,
    /// The desk accepted it (false: refused, `refusal` says why).
    pub accepted: bool,
    /// Why the desk refused it.
    pub refusal: Option<String>,
    /// Its performance report was queued for the VTN.
    pub reported: bool,
    /// The desk was asked to cancel it (a modification or cancellation on the VTN).
    pub cancelled: bool,
}

/// What became of a VTN event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeenState {
    /// Its intervals are scheduled (or some run).
    Active,
    /// Refused whole (bad input, or every interval refused by the desk): nothing moved.
    Refused,
    /// Gone from the VTN: its intervals were cancelled.
    Cancelled,
    /// Every accepted interval is reported.
    Done,
}

/// A VTN event as the VEN last saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seen {
    /// The OpenADR program's name.
    pub program: String,
    /// The event's name on the VTN, if it has one.
    pub name: Option<String>,
    /// The VTN's `modificationDateTime` (RFC 3339) of the version acted on.
    pub modified: String,
    /// How many versions were acted on (a modification makes a new generation).
    pub generation: u32,
    /// Where it stands.
    pub state: SeenState,
    /// Why it was refused.
    pub refusal: Option<String>,
    /// The intervals of every generation acted on (an earlier one's still owe their reports).
    pub intervals: Vec<Scheduled>,
    /// PRICE values per interval id, kept as a price signal.
    pub prices: Vec<(i32, f64)>,
    /// The opt-out report was queued.
    pub opted_out: bool,
    /// When first seen, ms since the epoch.
    pub first_seen_ms: i64,
    /// The event as the VTN sent it (the version acted on).
    pub raw: String,
    /// The telemetry the version's `reportDescriptors` ask for (absent in records written
    /// before the gateway reported telemetry).
    #[serde(default)]
    pub telemetry: Vec<crate::telemetry::Request>,
}

impl Seen {
    /// A VTN event seen for the first time, at `now_ms`, before anything is decided of it.
    pub fn first(program: &str, name: Option<String>, now_ms: i64) -> Seen {
        Seen {
            program: program.to_string(),
            name,
            modified: String::new(),
            generation: 0,
            state: SeenState::Active,
            refusal: None,
            intervals: Vec::new(),
            prices: Vec::new(),
            opted_out: false,
            first_seen_ms: now_ms,
            raw: String::new(),
            telemetry: Vec::new(),
        }
    }
}

/// A report waiting for the VTN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outgoing {
    /// The VTN event it reports on.
    pub event_id: String,
    /// Its `reportName`: unique per VEN, how a report already posted is recognised.
    pub report_name: String,
    /// The OpenADR `ReportRequest`, as JSON.
    pub request: String,
}

/// The VEN's state for `gridgate openadr status` and the page.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The VTN's base URL.
    pub vtn: String,
    /// The VEN name registered.
    pub ven_name: String,
    /// The VEN's id on the VTN, once registered.
    pub ven_id: Option<String>,
    /// Targets the VTN gave the VEN.
    pub ven_targets: Vec<String>,
    /// Programs followed: (name, id on the VTN; none while the VTN lists no such program).
    pub programs: Vec<(String, Option<String>)>,
    /// Last poll attempt and last successful one, ms since the epoch.
    pub last_poll_ms: i64,
    pub last_ok_ms: i64,
    /// The last error, with when (ms).
    pub last_error: Option<(i64, String)>,
    /// Reports posted since the store was made.
    pub reports_posted: u64,
    /// Refusals by kind (bad input from the VTN, the desk's limits).
    pub refused: std::collections::BTreeMap<String, u64>,
    /// Payload types received that no load follows, with how often.
    pub unmapped: std::collections::BTreeMap<String, u64>,
    /// The VTN's MQTT notifier, as the VEN last saw it.
    #[serde(default)]
    pub notifier: crate::notify::NotifierStatus,
}

/// The VEN's tables: `store.openadr()`.
pub struct OpenAdrTables<'a>(&'a Store);

/// The VEN keeps its tables in the gateway's store.
pub trait OpenAdrStore {
    /// The VEN's tables.
    fn openadr(&self) -> OpenAdrTables<'_>;
}

impl OpenAdrStore for Store {
    fn openadr(&self) -> OpenAdrTables<'_> {
        OpenAdrTables(self)
    }
}

fn record_error(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        path: "openadr tables".into(),
        problem: format!("a VEN record does not parse: {e}"),
    }
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(record_error)
}

fn parse<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(record_error)
}

impl OpenAdrTables<'_> {
    /// Every VTN event seen, by id.
    pub fn events(&self) -> Result<Vec<(String, Seen)>, StoreError> {
        let txn = self.0.begin_read()?;
        let Some(t) = read_table(&txn, EVENTS)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for entry in t.iter().map_err(StoreError::db)? {
            let (k, v) = entry.map_err(StoreError::db)?;
            out.push((k.value().to_string(), parse(v.value())?));
        }
        Ok(out)
    }

    /// Stores what became of a VTN event and queues `reports` after every report queued
    /// before, in one durable transaction.
    pub fn put_event(&self, id: &str, seen: &Seen, reports: &[Outgoing]) -> Result<(), StoreError> {
        let record = json(seen)?;
        let txn = self.0.begin_write()?;
        {
            txn.open_table(EVENTS)
                .map_err(StoreError::db)?
                .insert(id, record.as_slice())
                .map_err(StoreError::db)?;
            let mut outbox = txn.open_table(OUTBOX).map_err(StoreError::db)?;
            let first = outbox
                .last()
                .map_err(StoreError::db)?
                .map_or(0, |(k, _)| k.value() + 1);
            for (seq, r) in (first..).zip(reports) {
                outbox
                    .insert(seq, json(r)?.as_slice())
                    .map_err(StoreError::db)?;
            }
        }
        txn.commit().map_err(StoreError::db)
    }

    /// The reports waiting, oldest first.
    pub fn outbox(&self) -> Result<Vec<(u64, Outgoing)>, StoreError> {
        let txn = self.0.begin_read()?;
        let Some(t) = read_table(&txn, OUTBOX)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for entry in t.iter().map_err(StoreError::db)? {
            let (k, v) = entry.map_err(StoreError::db)?;
            out.push((k.value(), parse(v.value())?));
        }
        Ok(out)
    }

    /// How many reports wait.
    pub fn waiting(&self) -> Result<usize, StoreError> {
        let txn = self.0.begin_read()?;
        let Some(t) = read_table(&txn, OUTBOX)? else {
            return Ok(0);
        };
        Ok(t.len().map_err(StoreError::db)? as usize)
    }

    /// A report the VTN has (or will never take): out of the queue.
    pub fn posted(&self, seq: u64) -> Result<(), StoreError> {
        let txn = self.0.begin_write()?;
        txn.open_table(OUTBOX)
            .map_err(StoreError::db)?
            .remove(seq)
            .map_err(StoreError::db)?;
        txn.commit().map_err(StoreError::db)
    }

    /// The VEN's status, once it has run.
    pub fn status(&self) -> Result<Option<Status>, StoreError> {
        let txn = self.0.begin_read()?;
        let Some(t) = read_table(&txn, STATUS)? else {
            return Ok(None);
        };
        t.get("status")
            .map_err(StoreError::db)?
            .map(|v| parse(v.value()))
            .transpose()
    }

    /// Replaces the status.
    pub fn put_status(&self, status: &Status) -> Result<(), StoreError> {
        let record = json(status)?;
        let txn = self.0.begin_write()?;
        txn.open_table(STATUS)
            .map_err(StoreError::db)?
            .insert("status", record.as_slice())
            .map_err(StoreError::db)?;
        txn.commit().map_err(StoreError::db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(n: u32) -> Outgoing {
        Outgoing {
            event_id: "e".into(),
            report_name: format!("r{n}"),
            request: "{}".into(),
        }
    }

    fn seen() -> Seen {
        Seen::first("p", None, 1)
    }

    #[test]
    fn reports_queue_in_order_across_reopen_and_leave_once_posted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), "gw").unwrap();
            store
                .openadr()
                .put_event("a", &seen(), &[out(1), out(2)])
                .unwrap();
            store.openadr().put_event("b", &seen(), &[out(3)]).unwrap();
            let first = store.openadr().outbox().unwrap()[0].0;
            store.openadr().posted(first).unwrap();
        }
        let store = Store::open(dir.path(), "gw").unwrap();
        let names: Vec<String> = store
            .openadr()
            .outbox()
            .unwrap()
            .into_iter()
            .map(|(_, o)| o.report_name)
            .collect();
        assert_eq!(names, vec!["r2", "r3"]);
        // A report queued after a post still goes last.
        store.openadr().put_event("c", &seen(), &[out(4)]).unwrap();
        let last = store.openadr().outbox().unwrap().pop().unwrap().1;
        assert_eq!(last.report_name, "r4");
        assert_eq!(store.openadr().events().unwrap().len(), 3);
    }
}
