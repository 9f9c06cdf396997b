//! `/metrics`: the gateway's counters and gauges in the Prometheus (OpenMetrics) text
//! format, encoded by the Prometheus project's own client library.
//!
//! Most values are read at scrape time from where the stages already count (device states,
//! store, uplink, ingest, DR, ledger), so nothing is counted twice and a scrape always sees
//! the same numbers as the page. What has no counter elsewhere (acknowledgement latency of
//! DR loads, the page's own actions) is an instrument here, updated where it happens.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use gridgate_core::instruments::{Labels, labels};

use super::WebState;

/// The registry a scrape encodes.
#[derive(Debug)]
pub struct Exporter {
    registry: Registry,
}

impl Exporter {
    /// The exporter of `state`'s metrics.
    pub fn new(state: Arc<WebState>) -> Exporter {
        let mut registry = Registry::default();
        let i = state.instruments.clone();
        registry.register(
            "gridgate_dr_load_ack_latency_seconds",
            "Time from a DR event's due moment to the load's confirmed write",
            i.dr_ack_latency.clone(),
        );
        registry.register(
            "gridgate_web_actions",
            "Write actions on the commissioning page, by action and outcome",
            i.web_actions.clone(),
        );
        registry.register(
            "gridgate_web_refused",
            "Page and /metrics requests refused for want of a credential",
            i.web_refused.clone(),
        );
        registry.register_collector(Box::new(Scrape {
            state,
            standing: std::sync::Mutex::new(None),
        }));
        Exporter { registry }
    }

    /// The exposition text.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Reads the stages' own counters at scrape time.
struct Scrape {
    state: Arc<WebState>,
    /// Members' reputation as settlement over the replica last found it, and when.
    standing: std::sync::Mutex<Option<(std::time::Instant, Vec<Standing>)>>,
}

use gridgate_ledger_node::Standing;
use gridgate_ledger_node::tables::LedgerStore;

/// How long a computed reputation is shown before settlement runs again: it reads every
/// certified entry the replica holds, which is too much for every scrape.
const STANDING_FOR: std::time::Duration = std::time::Duration::from_secs(60);

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

/// One metric family, its samples by label set.
struct Fam {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Labels, f64)>,
}

impl Fam {
    fn new(name: &'static str, help: &'static str, kind: MetricType) -> Fam {
        Fam {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    fn one(name: &'static str, help: &'static str, kind: MetricType, v: f64) -> Fam {
        let mut f = Fam::new(name, help, kind);
        f.samples.push((Vec::new(), v));
        f
    }

    fn add(&mut self, l: Labels, v: f64) {
        self.samples.push((l, v));
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = matches!(self.kind, MetricType::Counter);
        let mut m = encoder.encode_descriptor(self.name, self.help, None, self.kind)?;
        if let [(l, v)] = self.samples.as_slice()
            && l.is_empty()
        {
            return if counter {
                ConstCounter::new(*v as u64).encode(m)
            } else {
                ConstGauge::new(*v).encode(m)
            };
        }
        for (l, v) in &self.samples {
            let fam = m.encode_family(l)?;
            if counter {
                ConstCounter::new(*v as u64).encode(fam)?;
            } else {
                ConstGauge::new(*v).encode(fam)?;
            }
        }
        Ok(())
    }
}

const COUNTER: MetricType = MetricType::Counter;
const GAUGE: MetricType = MetricType::Gauge;

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in self.families() {
            f.encode(&mut encoder)?;
        }
        Ok(())
    }
}

impl Scrape {
    /// Reputation by member, as the ledger node settles it, at most once a minute.
    fn standings(&self, cfg: &gridgate_config::GatewayConfig) -> Vec<Standing> {
        let Some(l) = &cfg.ledger else {
            return Vec::new();
        };
        let mut cached = self.standing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, v)) = cached.as_ref()
            && at.elapsed() < STANDING_FOR
        {
            return v.clone();
        }
        let now = gridgate_core::now_ms();
        let v = gridgate_ledger_node::standings(&self.state.store.store, l, now);
        *cached = Some((std::time::Instant::now(), v.clone()));
        v
    }

    fn families(&self) -> Vec<Fam> {
        let s = &self.state;
        let cfg = s.config.borrow().clone();
        let mut out = Vec::new();

        // Acquisition, per polled device.
        let snap = s.registry.snapshot();
        let mut polls = Fam::new("gridgate_polls", "Polls of a device", COUNTER);
        let mut missed = Fam::new(
            "gridgate_poll_slots_missed",
            "Poll slots skipped because the line was busy",
            COUNTER,
        );
        let mut acquired = Fam::new(
            "gridgate_readings_acquired",
            "Readings taken from a device, good or not",
            COUNTER,
        );
        let mut errors = Fam::new(
            "gridgate_read_errors",
            "Readings that were not good, by kind (timeout, crc, exception, meter_error, decode_error, offline, link_down)",
            COUNTER,
        );
        let mut online = Fam::new("gridgate_device_online", "1 while a device answers", GAUGE);
        let mut last_good = Fam::new(
            "gridgate_device_last_good_timestamp_seconds",
            "When a device's last good reading was taken (Unix time)",
            GAUGE,
        );
        for (name, d) in &snap {
            let dev = labels([("device", name), ("bus", &d.bus)]);
            polls.add(dev.clone(), d.polls as f64);
            missed.add(dev.clone(), d.missed_polls as f64);
            acquired.add(dev.clone(), d.readings.values().sum::<u64>() as f64);
            online.add(dev.clone(), f64::from(u8::from(d.online)));
            if let Some(t) = d.last_good_ms {
                last_good.add(dev.clone(), t as f64 / 1000.0);
            }
            for (kind, n) in d.readings.iter().filter(|(k, _)| **k != "good") {
                errors.add(
                    labels([("device", name), ("bus", &d.bus), ("kind", kind)]),
                    *n as f64,
                );
            }
        }
        out.extend([polls, missed, acquired, errors, online, last_good]);

        // MQTT field devices.
        if cfg.ingest.is_some() {
            out.push(Fam::one(
                "gridgate_mqtt_messages",
                "MQTT messages received from field devices",
                COUNTER,
                s.ingest.messages.load(Ordering::Relaxed) as f64,
            ));
            out.push(Fam::one(
                "gridgate_mqtt_readings",
                "Readings stored from MQTT field devices",
                COUNTER,
                s.ingest.readings.load(Ordering::Relaxed) as f64,
            ));
            let mut refused = Fam::new(
                "gridgate_mqtt_refused",
                "MQTT messages refused, by reason",
                COUNTER,
            );
            refused.add(
                labels([("reason", "unknown_topic")]),
                s.ingest.unknown_topic.load(Ordering::Relaxed) as f64,
            );
            if let Ok(m) = s.ingest.malformed.lock() {
                for (reason, n) in m.iter() {
                    refused.add(labels([("reason", reason)]), *n as f64);
                }
            }
            out.push(refused);
            out.push(Fam::one(
                "gridgate_mqtt_not_authorised",
                "Field devices the durable listener refused (wrong or missing credentials, or no acceptable client certificate)",
                COUNTER,
                s.ingest.not_authorised.load(Ordering::Relaxed) as f64,
            ));
        }

        // Every listener's connections.
        let listeners = s.instruments.listeners.all();
        if !listeners.is_empty() {
            let mut open = Fam::new(
                "gridgate_connections_open",
                "Connections a listener holds now",
                GAUGE,
            );
            let mut refused = Fam::new(
                "gridgate_connections_refused",
                "Connections refused because the listener held as many as it may",
                COUNTER,
            );
            let mut timed_out = Fam::new(
                "gridgate_connections_timed_out",
                "Connections closed after a stretch of silence or a TLS handshake past its deadline (the page's header deadline and gRPC's own handshake deadline close theirs uncounted)",
                COUNTER,
            );
            for a in &listeners {
                let l = labels([("listener", a.name())]);
                open.add(l.clone(), a.open() as f64);
                refused.add(l.clone(), a.refused() as f64);
                timed_out.add(l, a.timeouts() as f64);
            }
            out.push(open);
            out.push(refused);
            out.push(timed_out);
        }

        // The store.
        out.push(Fam::one(
            "gridgate_readings_stored",
            "Readings committed to the store since the gateway started",
            COUNTER,
            s.store.committed.load(Ordering::Relaxed) as f64,
        ));
        out.push(Fam::one(
            "gridgate_store_writable",
            "1 while the store takes commits, 0 after a failed one (a full disk) until one succeeds",
            GAUGE,
            f64::from(u8::from(s.store.health.writable.load(Ordering::Relaxed))),
        ));
        out.push(Fam::one(
            "gridgate_store_commit_failures",
            "Commits that failed (readings not acknowledged; sources resend them)",
            COUNTER,
            s.store.health.failed_commits.load(Ordering::Relaxed) as f64,
        ));
        out.push(Fam::one(
            "gridgate_readings_redelivered",
            "Readings dropped as already stored (the same point and device time: a message delivered again)",
            COUNTER,
            s.store.redelivered.dropped.load(Ordering::Relaxed) as f64,
        ));
        out.push(Fam::one(
            "gridgate_readings_conflicting",
            "Of the redelivered, readings whose value differed from the one stored for that time (the first is kept)",
            COUNTER,
            s.store.redelivered.conflicting.load(Ordering::Relaxed) as f64,
        ));
        out.push(Fam::one(
            "gridgate_store_budget_bytes",
            "Disk budget of the store",
            GAUGE,
            cfg.store.budget as f64,
        ));
        let store = &s.store.store;
        match store.stats() {
            Ok(st) => {
                out.push(Fam::one(
                    "gridgate_batches_closed",
                    "Signed batches closed (the next batch's sequence number)",
                    COUNTER,
                    st.next_seq as f64,
                ));
                out.push(Fam::one(
                    "gridgate_store_size_bytes",
                    "Bytes of stored batches and open readings",
                    GAUGE,
                    st.stored_bytes as f64,
                ));
                out.push(Fam::one(
                    "gridgate_store_open_readings",
                    "Readings waiting for the next batch",
                    GAUGE,
                    st.open_readings as f64,
                ));
                out.push(Fam::one(
                    "gridgate_store_first_batch",
                    "Oldest batch still stored",
                    GAUGE,
                    st.first_seq as f64,
                ));
                out.push(Fam::one(
                    "gridgate_dropped_readings",
                    "Readings dropped by the disk budget before every required consumer had them",
                    COUNTER,
                    st.dropped_readings as f64,
                ));
                out.push(Fam::one(
                    "gridgate_dropped_batches",
                    "Batches dropped by the disk budget",
                    COUNTER,
                    st.dropped_batches as f64,
                ));
                let mut cursor = Fam::new(
                    "gridgate_consumer_cursor",
                    "Next batch each consumer needs",
                    GAUGE,
                );
                let mut lag = Fam::new(
                    "gridgate_consumer_lag_batches",
                    "Batches closed and not yet acknowledged by each consumer",
                    GAUGE,
                );
                for (c, next) in store.cursors().unwrap_or_default() {
                    cursor.add(labels([("consumer", &c)]), next as f64);
                    lag.add(
                        labels([("consumer", &c)]),
                        st.next_seq.saturating_sub(next) as f64,
                    );
                }
                out.extend([cursor, lag]);
                if cfg.uplink.is_some() {
                    let c = s.uplink.cursor.load(Ordering::Relaxed);
                    out.push(Fam::one(
                        "gridgate_uplink_lag_batches",
                        "Batches closed and not yet acknowledged by the MQTT uplink",
                        GAUGE,
                        st.next_seq.saturating_sub(c) as f64,
                    ));
                    out.push(Fam::one(
                        "gridgate_uplink_lag_seconds",
                        "Age of the oldest batch the MQTT uplink has not had acknowledged",
                        GAUGE,
                        super::views::batch_age_s(store, c, st.next_seq).unwrap_or(0) as f64,
                    ));
                }
            }
            Err(e) => tracing::warn!("metrics: store unreadable: {e}"),
        }
        if cfg.uplink.is_some() {
            for (name, help, v) in [
                (
                    "gridgate_uplink_published",
                    "Batch publishes sent to the master station's broker (resends included)",
                    &s.uplink.published,
                ),
                (
                    "gridgate_uplink_acknowledged",
                    "Batches the master station's broker acknowledged",
                    &s.uplink.acknowledged,
                ),
                (
                    "gridgate_uplink_connects",
                    "Connections made to the master station's broker",
                    &s.uplink.connects,
                ),
                (
                    "gridgate_uplink_skipped",
                    "Batches skipped because retention had already dropped them",
                    &s.uplink.skipped,
                ),
            ] {
                out.push(Fam::one(
                    name,
                    help,
                    COUNTER,
                    v.load(Ordering::Relaxed) as f64,
                ));
            }
        }

        // DR.
        let mut dispatches = Fam::new(
            "gridgate_dr_dispatches",
            "DR events received, by outcome (accepted, or the refusal)",
            COUNTER,
        );
        dispatches.add(
            labels([("outcome", "accepted")]),
            s.dr.stats.accepted.load(Ordering::Relaxed) as f64,
        );
        if let Ok(m) = s.dr.stats.refused.lock() {
            for (kind, n) in m.iter() {
                dispatches.add(labels([("outcome", kind)]), *n as f64);
            }
        }
        out.push(dispatches);
        if let Ok(d) = super::views::dr_summary(s) {
            let mut events = Fam::new("gridgate_dr_events", "DR events stored, by state", GAUGE);
            for state in ["SCHEDULED", "ACTIVE", "COMPLETED", "CANCELLED"] {
                let n = d.events.get(state).copied().unwrap_or(0);
                events.add(labels([("state", state)]), n as f64);
            }
            out.push(events);
            out.push(Fam::one(
                "gridgate_dr_overrides",
                "Loads under manual override",
                GAUGE,
                d.overrides.len() as f64,
            ));
        }

        // The ledger replica.
        if cfg.ledger.is_some() {
            let mut certified = Fam::new(
                "gridgate_ledger_certified_entries",
                "Certified ledger entries held, by origin",
                GAUGE,
            );
            for (origin, next) in store.ledger().heads().unwrap_or_default() {
                certified.add(labels([("origin", &origin)]), next as f64);
            }
            out.push(certified);
            out.push(Fam::one(
                "gridgate_ledger_pending_entries",
                "This node's own ledger entries waiting for a certificate",
                GAUGE,
                store.ledger().pending_count(&cfg.id).unwrap_or(0) as f64,
            ));
            let mut reputation = Fam::new(
                "gridgate_ledger_reputation",
                "Members' reputation (0 to 1000) by settlement over this replica's certified entries",
                GAUGE,
            );
            let mut excluded = Fam::new(
                "gridgate_ledger_excluded",
                "1 while a member is excluded from new events (reputation under the threshold, in probation)",
                GAUGE,
            );
            for st in self.standings(&cfg) {
                reputation.add(labels([("member", &st.member)]), st.score as f64);
                excluded.add(
                    labels([("member", &st.member)]),
                    f64::from(u8::from(st.excluded)),
                );
            }
            out.extend([reputation, excluded]);
            out.push(Fam::one(
                "gridgate_ledger_shut_out_members",
                "Members shut out for equivocation",
                GAUGE,
                store.ledger().shut_outs().map_or(0, |v| v.len()) as f64,
            ));
            if let Ok(cut) = store.ledger().decided_state() {
                out.push(Fam::one(
                    "gridgate_ledger_decided_height",
                    "Height of the newest decided cut this replica holds (the consortium's agreed order)",
                    GAUGE,
                    cut.height as f64,
                ));
                out.push(Fam::one(
                    "gridgate_ledger_decided_cut_time_seconds",
                    "Time of the newest decided cut this replica holds (Unix seconds)",
                    GAUGE,
                    cut.time_ms as f64 / 1000.0,
                ));
            }
        }
        let c = &s.instruments.consensus;
        if c.active.load(Ordering::Relaxed) {
            out.push(Fam::one(
                "gridgate_consensus_view",
                "Newest view of this validator's consensus engine",
                GAUGE,
                c.view.load(Ordering::Relaxed) as f64,
            ));
            out.push(Fam::one(
                "gridgate_consensus_peers",
                "Other validators heard from over the consensus transport in the last 30 s",
                GAUGE,
                c.peers.load(Ordering::Relaxed) as f64,
            ));
            out.push(Fam::one(
                "gridgate_consensus_nullified_views",
                "Views that ended without a cut (a leader down, or a proposal no one could check)",
                COUNTER,
                c.nullified.load(Ordering::Relaxed) as f64,
            ));
            out.push(Fam::one(
                "gridgate_consensus_refused_proposals",
                "Proposed cuts this validator refused to vote for (a rule broken)",
                COUNTER,
                c.refused.load(Ordering::Relaxed) as f64,
            ));
            let mut finality = Fam::new(
                "gridgate_consensus_finality_seconds",
                "Time from a cut's proposal to its storing here, over the last cuts, by quantile",
                GAUGE,
            );
            for q in ["0.5", "0.99"] {
                if let Some(ms) = q.parse().ok().and_then(|q| c.finality_quantile(q)) {
                    finality.add(labels([("quantile", q)]), f64::from(ms) / 1000.0);
                }
            }
            out.push(finality);
        }

        // The OpenADR VEN (docs/openadr.md): what the VTN sent that moved nothing, and
        // whether the VTN answers.
        let ven = gridgate_openadr::tables::OpenAdrStore::openadr(&*s.store.store);
        if cfg.openadr.is_some()
            && let Ok(Some(st)) = ven.status()
        {
            let mut refused = Fam::new(
                "gridgate_openadr_refused",
                "VTN events or intervals refused, by kind (bad input from the VTN, the DR desk's limits)",
                COUNTER,
            );
            for (kind, n) in &st.refused {
                refused.add(labels([("kind", kind.as_str())]), *n as f64);
            }
            let mut unmapped = Fam::new(
                "gridgate_openadr_unmapped_payloads",
                "Payloads of a type no [[openadr.load]] follows, by type",
                COUNTER,
            );
            for (ty, n) in &st.unmapped {
                unmapped.add(labels([("type", ty.as_str())]), *n as f64);
            }
            out.extend([refused, unmapped]);
            out.push(Fam::one(
                "gridgate_openadr_reports_posted",
                "OpenADR reports the VTN took",
                COUNTER,
                st.reports_posted as f64,
            ));
            out.push(Fam::one(
                "gridgate_openadr_reports_waiting",
                "OpenADR reports waiting for the VTN",
                GAUGE,
                ven.waiting().unwrap_or(0) as f64,
            ));
            out.push(Fam::one(
                "gridgate_openadr_last_answer_seconds",
                "When the VTN last answered a whole poll (Unix seconds; 0: never)",
                GAUGE,
                st.last_ok_ms as f64 / 1000.0,
            ));
        }

        // The flexibility market, as this gateway's replica shows it.
        if cfg.market.is_some()
            && let Ok(m) = crate::views::market(s)
        {
            let cleared = m.intervals.iter().rev().find(|i| i.price.is_some());
            let open = m.intervals.iter().rev().find(|i| i.state == "open");
            let delivered = m.intervals.iter().rev().find(|i| i.delivered_wh.is_some());
            out.push(Fam::one(
                "gridgate_market_rounds",
                "Rounds announced so far in the newest interval whose discovery is open",
                GAUGE,
                open.map_or(0, |i| i.prices.len()) as f64,
            ));
            out.push(Fam::one(
                "gridgate_market_answers",
                "This gateway's answers in the market's newest intervals",
                GAUGE,
                m.intervals.iter().map(|i| i.answers.len()).sum::<usize>() as f64,
            ));
            if let Some(c) = cleared {
                out.push(Fam::one(
                    "gridgate_market_price_milli_per_kwh",
                    "The newest final clearing's price, milli-units per kWh",
                    GAUGE,
                    c.price.unwrap_or(0) as f64,
                ));
                out.push(Fam::one(
                    "gridgate_market_imbalance_wh",
                    "The newest final clearing's last imbalance (demand less supply), Wh",
                    GAUGE,
                    c.imbalances_wh.last().copied().unwrap_or(0) as f64,
                ));
                out.push(Fam::one(
                    "gridgate_market_accepted_wh",
                    "What the newest final clearing accepted of this gateway, Wh (+ bought)",
                    GAUGE,
                    c.accepted_wh.unwrap_or(0) as f64,
                ));
            }
            if let Some(d) = delivered {
                out.push(Fam::one(
                    "gridgate_market_delivered_wh",
                    "This gateway's newest measured delivery, Wh (+ bought)",
                    GAUGE,
                    d.delivered_wh.unwrap_or(0) as f64,
                ));
                out.push(Fam::one(
                    "gridgate_market_deviation_wh",
                    "Its deviation from what was accepted, Wh",
                    GAUGE,
                    (d.delivered_wh.unwrap_or(0) - d.accepted_wh.unwrap_or(0)).abs() as f64,
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    /// The shipped Grafana dashboard asks only for metrics the gateway exports.
    #[test]
    fn the_dashboard_uses_only_exported_metrics() {
        let dashboard = include_str!("../../../deploy/grafana-dashboard.json");
        let source = include_str!("metrics.rs");
        let parsed: serde_json::Value = serde_json::from_str(dashboard).expect("dashboard JSON");
        assert!(parsed["panels"].as_array().is_some_and(|p| !p.is_empty()));
        let mut names = std::collections::BTreeSet::new();
        let bytes = dashboard.as_bytes();
        let mut i = 0;
        while let Some(at) = dashboard[i..].find("gridgate_") {
            let start = i + at;
            let end = start
                + bytes[start..]
                    .iter()
                    .take_while(|b| b.is_ascii_lowercase() || **b == b'_')
                    .count();
            names.insert(&dashboard[start..end]);
            i = end;
        }
        assert!(names.len() > 10, "{names:?}");
        for name in names {
            let base = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(
                source.contains(&format!("\"{base}\"")),
                "the dashboard uses {name}, which /metrics does not export"
            );
        }
    }
}
