//! What the page (and `gridgate status`) shows, as JSON: built from the running gateway's
//! state on each request. The same types are read back by `gridgate status`, so the
//! terminal and the page show the same facts.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use gridgate_proto::v1 as pb;
use prost::Message;
use serde::{Deserialize, Serialize};

use super::WebState;
use gridgate_config::{DeviceKind, PointSource};
use gridgate_core::reading::now_ms;
use gridgate_dr::tables::DrStore;
use gridgate_ledger_node::tables::LedgerStore;
use gridgate_store::StoreError;

/// The overview: who the gateway is and how every stage is doing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Overview {
    /// Identity.
    pub gateway: Identity,
    /// What the caller may do (`read` or `admin`).
    pub access: String,
    /// Whether write actions exist at all (an admin credential is configured).
    pub writes_enabled: bool,
    /// Devices online and in all.
    pub devices: DeviceCounts,
    /// Each bus.
    pub buses: Vec<BusView>,
    /// The store.
    pub store: StoreView,
    /// The MQTT uplink (none without one).
    pub uplink: Option<UplinkView>,
    /// MQTT field devices.
    pub ingest: Option<IngestView>,
    /// DR: events by state and loads under override.
    pub dr: DrSummary,
    /// The ledger replica (none without `[ledger]`).
    pub ledger: Option<LedgerView>,
}

/// Who the gateway is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    /// `[gateway] id`.
    pub id: String,
    /// Ed25519 public key (hex) that signs batches, reports and ledger entries.
    pub public_key: String,
    /// Software version.
    pub version: String,
    /// Seconds since the gateway started.
    pub uptime_s: u64,
}

/// Device counts, by the states [`device_state`] gives (they add up to `total`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCounts {
    /// Polled and MQTT devices.
    pub total: usize,
    pub online: usize,
    pub offline: usize,
    /// No good reading yet.
    #[serde(default)]
    pub waiting: usize,
}

/// A device's state, as every view says it (the page, `gridgate status`, the demo):
/// `waiting` until its first good reading (a polled device not yet polled or that never
/// answered well, an MQTT device that has not published), then, for a polled device,
/// `online` or `offline` (after `offline_after` failed polls), and for an MQTT device
/// `online`.
pub fn device_state(
    polled: Option<&gridgate_acquire::state::DeviceStatus>,
    last_good_mqtt: Option<i64>,
) -> &'static str {
    match polled {
        Some(ds) if ds.last_good_ms.is_none() => "waiting",
        Some(ds) if ds.online => "online",
        Some(_) => "offline",
        None if last_good_mqtt.is_some() => "online",
        None => "waiting",
    }
}

/// Every configured device counted by its [`device_state`].
pub fn device_counts(
    cfg: &gridgate_config::GatewayConfig,
    snap: &BTreeMap<String, gridgate_acquire::state::DeviceStatus>,
    latest: &crate::latest::Latest,
) -> DeviceCounts {
    let mut counts = DeviceCounts::default();
    for d in described(cfg) {
        let polled = snap.get(&d.name);
        let mqtt_good = match polled {
            Some(_) => None,
            None => last_good_of(latest, &d),
        };
        counts.total += 1;
        match device_state(polled, mqtt_good) {
            "online" => counts.online += 1,
            "offline" => counts.offline += 1,
            _ => counts.waiting += 1,
        }
    }
    counts
}

/// When an MQTT device last sent a good reading of any of its points.
fn last_good_of(latest: &crate::latest::Latest, d: &Described) -> Option<i64> {
    latest
        .get_many(d.points.iter().map(|(p, _, _)| p.as_str()))
        .into_iter()
        .filter_map(|(_, st)| st?.last_good.map(|g| g.ts_ms))
        .max()
}

/// One bus.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BusView {
    pub name: String,
    /// `dlt645` or `modbus`.
    pub protocol: String,
    /// Link URL.
    pub link: String,
    /// Devices on it.
    pub devices: usize,
    /// Of which online.
    pub online: usize,
    /// Polls done.
    pub polls: u64,
    /// Readings that were not good (timeouts, CRC errors, exceptions...).
    pub errors: u64,
    /// Poll slots skipped because the line was busy.
    pub missed_polls: u64,
    /// Bad readings by kind.
    pub errors_by_kind: BTreeMap<String, u64>,
}

/// The store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreView {
    /// Readings committed since start.
    pub readings_stored: u64,
    /// Next batch to close.
    pub next_batch: u64,
    /// Oldest batch kept.
    pub first_batch: u64,
    /// Readings waiting for the next batch.
    pub open_readings: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Disk budget in bytes.
    pub budget_bytes: u64,
    /// Readings dropped by the budget before delivery.
    pub dropped_readings: u64,
    /// Each consumer's cursor (next batch it needs).
    pub cursors: BTreeMap<String, u64>,
}

/// The MQTT uplink.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UplinkView {
    pub broker: String,
    /// Batches acknowledged since start.
    pub acknowledged: u64,
    /// Batches closed but not acknowledged.
    pub lag_batches: u64,
    /// Age of the oldest batch not acknowledged, seconds (0 when none).
    pub lag_seconds: u64,
    /// Connections made since start.
    pub connects: u64,
}

/// MQTT field devices.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IngestView {
    /// Messages received.
    pub messages: u64,
    /// Readings stored from them.
    pub readings: u64,
    /// Messages refused (malformed, unknown topic).
    pub refused: u64,
}

/// DR at a glance.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DrSummary {
    /// Events by state (`SCHEDULED`, `ACTIVE`, `COMPLETED`, `CANCELLED`).
    pub events: BTreeMap<String, u64>,
    /// Loads under manual override.
    pub overrides: Vec<String>,
    /// Loads controlled by this gateway.
    pub loads: usize,
}

/// The ledger replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LedgerView {
    /// `gateway` or `validator`.
    pub role: String,
    /// Certified entries held, by origin.
    pub certified: BTreeMap<String, u64>,
    /// This node's own entries waiting for a certificate.
    pub pending: u64,
    /// Origins shut out for equivocation.
    pub shut_out: Vec<String>,
    /// This gateway's part of today's statement, once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub today: Option<SettledView>,
    /// The newest decided cut this replica holds (none before consensus decided any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided: Option<DecidedView>,
}

/// The newest decided cut a replica holds: where the consortium's agreed order stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecidedView {
    /// Its height.
    pub height: u64,
    /// Its time (ms since 1970, UTC).
    pub time_ms: i64,
    /// The first 16 hex digits of its digest.
    pub digest: String,
}

/// A gateway's lines of today's (provisional) statement, as the demo's terminal shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettledView {
    /// The first 16 hex digits of the statement's hash (the same on every replica that
    /// holds the same entries).
    pub statement: String,
    /// Events settled for this gateway.
    pub events: usize,
    /// Paid energy, kWh.
    pub delivered_kwh: f64,
    /// Payment less penalties, in units of the consortium's currency.
    pub paid: f64,
}

/// Today's statement is a read of every entry held: worked out at most this often.
const SETTLED_FOR: std::time::Duration = std::time::Duration::from_secs(15);

/// When a [`SettledView`] was worked out, and what it was.
type Settled = (std::time::Instant, Option<SettledView>);

/// The last [`SettledView`] worked out, and when.
#[derive(Debug, Clone, Default)]
pub struct SettledCache(std::sync::Arc<std::sync::Mutex<Option<Settled>>>);

fn settled_today(s: &WebState, cfg: &gridgate_config::GatewayConfig) -> Option<SettledView> {
    let l = cfg.ledger.as_ref()?;
    let mut cached = s.settled.0.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((at, v)) = cached.as_ref()
        && at.elapsed() < SETTLED_FOR
    {
        return v.clone();
    }
    let v = gridgate_ledger_node::today(&s.store.store, l, now_ms()).and_then(|st| {
        let mine: Vec<_> = st.lines.iter().filter(|x| x.gateway == cfg.id).collect();
        (!mine.is_empty()).then(|| SettledView {
            statement: hex::encode(st.hash())[..16].to_string(),
            events: mine.len(),
            delivered_kwh: mine.iter().map(|x| x.delivered_mwh).sum::<i64>() as f64 / 1e6,
            paid: mine
                .iter()
                .map(|x| x.payment_milli - x.penalty_milli)
                .sum::<i64>() as f64
                / 1000.0,
        })
    });
    *cached = Some((std::time::Instant::now(), v.clone()));
    v
}

/// A page of devices.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevicePage {
    /// Devices matching the filter.
    pub total: usize,
    /// Index of the first one here.
    pub offset: usize,
    /// The devices.
    pub items: Vec<DeviceView>,
}

/// One device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceView {
    pub name: String,
    /// Bus (`mqtt` for MQTT field devices).
    pub bus: String,
    /// `dlt645`, `modbus` or `mqtt`.
    pub protocol: String,
    /// Address (DL/T 645 address, Modbus unit, MQTT topic).
    pub address: String,
    /// `online`, `offline` or `waiting` (no reading yet).
    pub state: String,
    /// Polls done (0 for MQTT devices).
    pub polls: u64,
    /// Readings that were not good.
    pub errors: u64,
    /// Age of the last good reading, ms (none yet).
    pub last_good_age_ms: Option<i64>,
    /// Its points, with their last readings.
    pub points: Vec<PointView>,
}

/// One point and its last reading.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PointView {
    /// `device/point`.
    pub name: String,
    pub unit: String,
    /// Where it is read from (DI, register...).
    pub source: String,
    /// Last good value, as text.
    pub value: Option<String>,
    /// Quality of the last reading.
    pub quality: Option<String>,
    /// Age of the last reading, ms.
    pub age_ms: Option<i64>,
    /// The last reading's error, if it was bad.
    pub error: Option<String>,
    /// Its last hour, oldest first (a single device's view only: the list leaves it out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<crate::latest::Sample>,
    /// Its last day from the store's meter samples, one mean per [`DAY_BUCKET_MS`]: only a
    /// load's meter point has samples (a single device's view only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub day: Vec<(i64, f64)>,
}

/// The day chart's step: 288 points for 24 hours.
pub const DAY_BUCKET_MS: i64 = 300_000;

/// `point`'s samples over the last day, averaged per [`DAY_BUCKET_MS`] (a bucket's time is
/// its start); empty for a point the store keeps no samples of.
fn day_of(
    store: &gridgate_store::Store,
    point: &str,
    now: i64,
) -> Result<Vec<(i64, f64)>, StoreError> {
    let from = now - 86_400_000;
    let mut out: Vec<(i64, f64, u32)> = Vec::new();
    for (t, v) in store.samples(point, from, now + 1)? {
        let bucket = t - t.rem_euclid(DAY_BUCKET_MS);
        match out.last_mut() {
            Some((b, sum, n)) if *b == bucket => {
                *sum += v;
                *n += 1;
            }
            _ => out.push((bucket, v, 1)),
        }
    }
    Ok(out
        .into_iter()
        .map(|(b, sum, n)| (b, sum / f64::from(n)))
        .collect())
}

/// DR events and loads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrView {
    /// Events, newest first.
    pub events: Vec<EventView>,
    /// Loads with their override state.
    pub loads: Vec<LoadView>,
}

/// One event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventView {
    pub issuer: String,
    /// Event id.
    pub id: String,
    pub program: String,
    pub state: String,
    /// Start, ms since the epoch.
    pub start_ms: i64,
    /// End.
    pub end_ms: i64,
    /// Cancelled by its issuer.
    pub cancelled: bool,
    /// Report written.
    pub reported: bool,
    /// Each load.
    pub loads: Vec<EventLoadView>,
    /// The signed report's figures at its shortest interval length, once written (the
    /// page charts them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<ReportView>,
}

/// A performance report's intervals, as the page charts them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportView {
    /// Interval length, seconds.
    pub length_s: u32,
    /// All loads together.
    pub total: Vec<IntervalView>,
    /// Each load's, by load name.
    pub loads: Vec<(String, Vec<IntervalView>)>,
}

/// One interval of a report: average watts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IntervalView {
    pub start_ms: i64,
    pub end_ms: i64,
    pub baseline_w: i64,
    pub actual_w: i64,
    pub reduction_w: i64,
    /// Every load had meter samples and a baseline in it.
    pub complete: bool,
}

/// Reports older than the newest few are left out of the DR view: each costs a store read
/// and a decode on every refresh of the page.
const CHARTED_REPORTS: usize = 5;

fn report_view(store: &gridgate_store::Store, issuer: &str, id: &str) -> Option<ReportView> {
    let key = gridgate_dr::event::event_key(issuer, id);
    let signed = store.dr().report(&key).ok()??;
    let signed = pb::SignedPerformanceReport::decode(signed.as_slice()).ok()?;
    let report = pb::PerformanceReport::decode(signed.report.as_slice()).ok()?;
    let shortest = |series: &[pb::IntervalSeries]| -> Option<(u32, Vec<IntervalView>)> {
        let s = series.iter().min_by_key(|s| s.length_s)?;
        let intervals = s
            .intervals
            .iter()
            .map(|i| IntervalView {
                start_ms: i.start_ms,
                end_ms: i.end_ms,
                baseline_w: i.baseline_w,
                actual_w: i.actual_w,
                reduction_w: i.reduction_w,
                complete: i.complete,
            })
            .collect();
        Some((s.length_s, intervals))
    };
    let (length_s, total) = shortest(&report.total)?;
    let loads = report
        .loads
        .iter()
        .filter_map(|l| {
            let (len, intervals) = shortest(&l.series)?;
            (len == length_s).then(|| (l.load.clone(), intervals))
        })
        .collect();
    Some(ReportView {
        length_s,
        total,
        loads,
    })
}

/// A load's part in an event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventLoadView {
    pub load: String,
    pub state: String,
    /// Target value.
    pub target: f64,
    /// Writes tried.
    pub attempts: u32,
    /// Acknowledgement latency, ms (0 until acknowledged).
    pub latency_ms: i64,
    pub last_error: String,
}

/// A load this gateway controls.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadView {
    pub name: String,
    /// What moves it.
    pub control: String,
    /// Under manual override.
    pub overridden: bool,
}

/// Devices on the page at most.
pub const MAX_PAGE: usize = 200;

fn state_name(s: pb::EventState) -> String {
    s.as_str_name()
        .trim_start_matches("EVENT_STATE_")
        .to_string()
}

/// The overview.
pub fn overview(s: &WebState, access: super::auth::Access) -> Result<Overview, StoreError> {
    let cfg = s.config.borrow().clone();
    let snap = s.registry.snapshot();
    let store = &s.store.store;
    let st = store.stats()?;
    let buses = cfg
        .buses
        .iter()
        .map(|b| {
            let mut v = BusView {
                name: b.name.clone(),
                protocol: b.protocol.to_string(),
                link: b.link.to_string(),
                devices: b.devices.len(),
                online: 0,
                polls: 0,
                errors: 0,
                missed_polls: 0,
                errors_by_kind: BTreeMap::new(),
            };
            for d in &b.devices {
                let Some(ds) = snap.get(&d.name) else {
                    continue;
                };
                v.online += usize::from(ds.online);
                v.polls += ds.polls;
                v.missed_polls += ds.missed_polls;
                for (k, n) in ds.readings.iter().filter(|(k, _)| **k != "good") {
                    v.errors += n;
                    *v.errors_by_kind.entry(k.to_string()).or_default() += n;
                }
            }
            v
        })
        .collect();
    let next_batch = st.next_seq;
    let uplink = match &cfg.uplink {
        Some(u) => {
            let cursor = s.uplink.cursor.load(Ordering::Relaxed);
            Some(UplinkView {
                broker: u.broker.to_string(),
                acknowledged: s.uplink.acknowledged.load(Ordering::Relaxed),
                lag_batches: next_batch.saturating_sub(cursor),
                lag_seconds: batch_age_s(store, cursor, next_batch)?,
                connects: s.uplink.connects.load(Ordering::Relaxed),
            })
        }
        None => None,
    };
    let ledger = match &cfg.ledger {
        Some(l) => Some(LedgerView {
            role: l.role.as_str().into(),
            certified: store
                .ledger()
                .heads()?
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
            pending: store.ledger().pending_count(&cfg.id)?,
            shut_out: store
                .ledger()
                .shut_outs()?
                .into_iter()
                .map(|(o, _)| o)
                .collect(),
            today: settled_today(s, &cfg),
            decided: store
                .ledger()
                .decided_state()
                .ok()
                .filter(|c| c.height > 0)
                .map(|c| DecidedView {
                    height: c.height,
                    time_ms: c.time_ms,
                    digest: hex::encode(&c.digest[..8]),
                }),
        }),
        None => None,
    };
    Ok(Overview {
        gateway: Identity {
            id: cfg.id.clone(),
            public_key: hex::encode(s.public_key),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_s: s.started.elapsed().as_secs(),
        },
        access: access.name().to_string(),
        writes_enabled: s.gate.has_admin(),
        devices: device_counts(&cfg, &snap, &s.latest),
        buses,
        store: StoreView {
            readings_stored: s.store.committed.load(Ordering::Relaxed),
            next_batch,
            first_batch: st.first_seq,
            open_readings: st.open_readings,
            bytes: st.stored_bytes,
            budget_bytes: cfg.store.budget,
            dropped_readings: st.dropped_readings,
            cursors: store.cursors()?.into_iter().collect(),
        },
        uplink,
        ingest: cfg.ingest.as_ref().map(|_| IngestView {
            messages: s.ingest.messages.load(Ordering::Relaxed),
            readings: s.ingest.readings.load(Ordering::Relaxed),
            refused: s.ingest.malformed_total() + s.ingest.unknown_topic.load(Ordering::Relaxed),
        }),
        dr: dr_summary(s)?,
        ledger,
    })
}

/// Seconds since the batch at `cursor` was closed (0 when the consumer is up to date).
pub fn batch_age_s(
    store: &gridgate_store::Store,
    cursor: u64,
    next: u64,
) -> Result<u64, StoreError> {
    if cursor >= next {
        return Ok(0);
    }
    let created = store
        .batches_from(cursor, 1)?
        .into_iter()
        .next()
        .and_then(|(_, bytes)| pb::SignedBatch::decode(bytes.as_slice()).ok())
        .and_then(|sb| pb::Batch::decode(sb.batch.as_slice()).ok())
        .map(|b| b.created_at_ms);
    Ok(created.map_or(0, |c| {
        u64::try_from((now_ms() - c).max(0) / 1000).unwrap_or(0)
    }))
}

fn decode_events(store: &gridgate_store::Store) -> Result<Vec<pb::EventStatus>, StoreError> {
    Ok(store
        .dr()
        .events()?
        .into_iter()
        .filter_map(|(_, bytes)| pb::EventStatus::decode(bytes.as_slice()).ok())
        .collect())
}

/// Events by state, and the overrides.
pub fn dr_summary(s: &WebState) -> Result<DrSummary, StoreError> {
    let cfg = s.config.borrow().clone();
    let mut events = BTreeMap::new();
    for e in decode_events(&s.store.store)? {
        *events.entry(state_name(e.state())).or_default() += 1;
    }
    Ok(DrSummary {
        events,
        overrides: s.store.store.dr().overrides()?.into_iter().collect(),
        loads: cfg.loads.len(),
    })
}

/// Every event, newest first, and the loads.
pub fn dr(s: &WebState) -> Result<DrView, StoreError> {
    let cfg = s.config.borrow().clone();
    let overrides = s.store.store.dr().overrides()?;
    let mut events: Vec<EventView> = decode_events(&s.store.store)?
        .into_iter()
        .map(|e| {
            let ev = e
                .signed
                .as_ref()
                .and_then(|sig| pb::DrEvent::decode(sig.event.as_slice()).ok())
                .unwrap_or_default();
            EventView {
                issuer: ev.issuer,
                id: ev.id,
                program: ev.program,
                state: state_name(e.state()),
                start_ms: e.start_ms,
                end_ms: e.end_ms,
                cancelled: e.cancelled,
                reported: e.reported,
                loads: e
                    .loads
                    .iter()
                    .map(|l| EventLoadView {
                        load: l.load.clone(),
                        state: l
                            .state()
                            .as_str_name()
                            .trim_start_matches("LOAD_STATE_")
                            .to_string(),
                        target: l.target,
                        attempts: l.attempts,
                        latency_ms: l.latency_ms,
                        last_error: l.last_error.clone(),
                    })
                    .collect(),
                report: None,
            }
        })
        .collect();
    events.sort_by_key(|e| std::cmp::Reverse(e.start_ms));
    for e in events
        .iter_mut()
        .filter(|e| e.reported)
        .take(CHARTED_REPORTS)
    {
        e.report = report_view(&s.store.store, &e.issuer, &e.id);
    }
    let loads = cfg
        .loads
        .iter()
        .map(|l| LoadView {
            name: l.name.clone(),
            control: match &l.control {
                Some(gridgate_config::Control::Point(p)) => format!("{}/{}", p.device, p.point),
                Some(gridgate_config::Control::Mqtt(m)) => format!("mqtt {}", m.command_topic),
                None => "none (measured only)".into(),
            },
            overridden: overrides.contains(&l.name),
        })
        .collect();
    Ok(DrView { events, loads })
}

/// A device as the config describes it, without its live state.
struct Described {
    name: String,
    bus: String,
    protocol: String,
    address: String,
    points: Vec<(String, String, String)>,
}

fn described(cfg: &gridgate_config::GatewayConfig) -> Vec<Described> {
    let mut out: Vec<Described> = cfg
        .devices()
        .map(|(b, d)| Described {
            name: d.name.clone(),
            bus: b.name.clone(),
            protocol: b.protocol.to_string(),
            address: match &d.kind {
                DeviceKind::Dlt645 { address } => address.to_string(),
                DeviceKind::Modbus { unit, .. } => format!("unit {unit}"),
            },
            points: d
                .points
                .iter()
                .map(|p| {
                    let source = match &p.source {
                        PointSource::Dlt645(di) => format!("DI {di}"),
                        PointSource::Modbus(m) => format!("{} {}", m.table, m.address),
                    };
                    (format!("{}/{}", d.name, p.name), p.unit.clone(), source)
                })
                .collect(),
        })
        .collect();
    if let Some(i) = &cfg.ingest {
        out.extend(i.devices.iter().map(|d| {
            Described {
                name: d.name.clone(),
                bus: "mqtt".into(),
                protocol: "mqtt".into(),
                address: d.topic.clone(),
                points: d
                    .points
                    .iter()
                    .map(|(p, unit)| (format!("{}/{p}", d.name), unit.clone(), "json".into()))
                    .collect(),
            }
        }));
    }
    out
}

/// Devices whose name, bus or address contains `filter`, `limit` of them from `offset`.
pub fn devices(s: &WebState, filter: &str, offset: usize, limit: usize) -> DevicePage {
    let cfg = s.config.borrow().clone();
    let filter = filter.to_lowercase();
    let matching: Vec<Described> = described(&cfg)
        .into_iter()
        .filter(|d| {
            filter.is_empty()
                || d.name.to_lowercase().contains(&filter)
                || d.bus.to_lowercase().contains(&filter)
                || d.address.to_lowercase().contains(&filter)
        })
        .collect();
    let total = matching.len();
    let snap = s.registry.snapshot();
    let now = now_ms();
    let items = matching
        .into_iter()
        .skip(offset)
        .take(limit.clamp(1, MAX_PAGE))
        .map(|d| device_view(s, &snap, d, now, false))
        .collect();
    DevicePage {
        total,
        offset,
        items,
    }
}

/// One device by name.
pub fn device(s: &WebState, name: &str) -> Option<DeviceView> {
    let cfg = s.config.borrow().clone();
    let d = described(&cfg).into_iter().find(|d| d.name == name)?;
    Some(device_view(s, &s.registry.snapshot(), d, now_ms(), true))
}

fn device_view(
    s: &WebState,
    snap: &BTreeMap<String, gridgate_acquire::state::DeviceStatus>,
    d: Described,
    now: i64,
    with_history: bool,
) -> DeviceView {
    let states = s
        .latest
        .get_many(d.points.iter().map(|(p, _, _)| p.as_str()));
    let points: Vec<PointView> = d
        .points
        .iter()
        .zip(states)
        .map(|((name, unit, source), (_, st))| PointView {
            name: name.clone(),
            unit: unit.clone(),
            source: source.clone(),
            value: st
                .as_ref()
                .and_then(|p| p.last_good.as_ref())
                .and_then(|g| g.value.as_ref())
                .map(|v| v.to_string()),
            quality: st.as_ref().map(|p| p.quality.to_string()),
            age_ms: st.as_ref().map(|p| now - p.ts_ms),
            error: st.as_ref().and_then(|p| p.error.clone()),
            history: match (&st, with_history) {
                (Some(p), true) => p.history.samples().collect(),
                _ => Vec::new(),
            },
            day: if with_history {
                day_of(&s.store.store, name, now).unwrap_or_default()
            } else {
                Vec::new()
            },
        })
        .collect();
    let polled = snap.get(&d.name);
    let last_good_mqtt = match polled {
        Some(_) => None,
        None => last_good_of(&s.latest, &d),
    };
    let state = device_state(polled, last_good_mqtt);
    let (polls, errors, last_good_age_ms) = match polled {
        Some(ds) => (
            ds.polls,
            ds.readings
                .iter()
                .filter(|(k, _)| **k != "good")
                .map(|(_, n)| n)
                .sum(),
            ds.last_good_ms.map(|t| now - t),
        ),
        None => (0, 0, last_good_mqtt.map(|t| now - t)),
    };
    DeviceView {
        name: d.name,
        bus: d.bus,
        protocol: d.protocol,
        address: d.address,
        state: state.to_string(),
        polls,
        errors,
        last_good_age_ms,
        points,
    }
}

/// One market interval on the page.
#[derive(Debug, Serialize)]
pub struct MarketIntervalView {
    /// Its start (ms).
    pub interval_ms: i64,
    /// Each round's price f+1 validators agreed on, in order.
    pub prices: Vec<i64>,
    /// The imbalance after each round (Wh), once the clearing reports it.
    pub imbalances_wh: Vec<i64>,
    /// "open", "cleared" or "announced".
    pub state: &'static str,
    /// The clearing price, once final.
    pub price: Option<i64>,
    /// Why discovery stopped.
    pub stop: Option<String>,
    /// Energy traded between members, Wh.
    pub matched_wh: Option<i64>,
    /// This gateway's answers: (round, price, Wh).
    pub answers: Vec<(u32, i64, i64)>,
    /// What the clearing accepted of it, Wh.
    pub accepted_wh: Option<i64>,
    /// Of that, with members.
    pub matched_mine_wh: Option<i64>,
    /// What it delivered, Wh.
    pub delivered_wh: Option<i64>,
}

/// The market as this gateway sees it.
#[derive(Debug, Serialize, Default)]
pub struct MarketView {
    /// Its area (none: no `[market]`).
    pub area: Option<String>,
    /// The newest intervals, oldest first.
    pub intervals: Vec<MarketIntervalView>,
}

/// The OpenADR VEN as `/api/openadr` shows it (`gridgate openadr status`, the DR tab).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OpenAdrView {
    /// The config has `[openadr]`.
    pub configured: bool,
    /// The VEN's status, once it has run.
    pub status: Option<gridgate_openadr::tables::Status>,
    /// Reports waiting for the VTN.
    pub waiting: usize,
    /// VTN events, newest first (their raw JSON left out), at most [`OPENADR_EVENTS`].
    pub events: Vec<(String, gridgate_openadr::tables::Seen)>,
}

/// VTN events the view lists.
pub const OPENADR_EVENTS: usize = 20;

/// The VEN's status, its queue and the newest VTN events.
pub fn openadr(s: &WebState) -> Result<OpenAdrView, StoreError> {
    use gridgate_openadr::tables::OpenAdrStore;
    let configured = s.config.borrow().openadr.is_some();
    let t = s.store.store.openadr();
    let mut events = t.events()?;
    events.sort_by_key(|(_, e)| std::cmp::Reverse(e.first_seen_ms));
    events.truncate(OPENADR_EVENTS);
    for (_, e) in &mut events {
        e.raw.clear();
    }
    Ok(OpenAdrView {
        configured,
        status: t.status()?,
        waiting: t.waiting()?,
        events,
    })
}

/// Intervals the page and the metrics show.
pub const MARKET_INTERVALS: usize = 8;

/// The newest market intervals of the gateway's area (from its replica: the validators'
/// logs and its own), with its part in each.
pub fn market(s: &WebState) -> Result<MarketView, StoreError> {
    let cfg = s.config.borrow().clone();
    let (Some(m), Some(l)) = (&cfg.market, &cfg.ledger) else {
        return Ok(MarketView::default());
    };
    let Ok(members) = gridgate_ledger_node::load_members(l) else {
        return Ok(MarketView::default());
    };
    // Enough to cover the newest intervals with their lead (a day at most).
    let since = gridgate_core::now_ms() - 86_400_000;
    let intervals = gridgate_ledger_node::market::view(
        &s.store.store,
        &members,
        &m.area,
        &cfg.id,
        since,
        MARKET_INTERVALS,
    )?
    .into_iter()
    .map(|v| {
        let c = v.clearing.as_ref();
        MarketIntervalView {
            interval_ms: v.interval_ms,
            prices: c.map_or_else(
                || v.rounds.iter().map(|r| r.1).collect(),
                |c| c.prices.clone(),
            ),
            imbalances_wh: c.map(|c| c.imbalances_wh.clone()).unwrap_or_default(),
            state: match (c, v.rounds.is_empty()) {
                (Some(_), _) => "cleared",
                (None, false) => "open",
                (None, true) => "announced",
            },
            price: c.map(|c| c.price_milli_per_kwh),
            stop: c.map(|c| c.stop.clone()),
            matched_wh: c.map(|c| c.matched_wh),
            answers: v.answers,
            accepted_wh: v.accepted.as_ref().map(|a| a.asked_wh),
            matched_mine_wh: v.accepted.as_ref().map(|a| a.matched_wh),
            delivered_wh: v.delivery.as_ref().map(|d| d.delivered_wh),
        }
    })
    .collect();
    Ok(MarketView {
        area: Some(m.area.clone()),
        intervals,
    })
}
