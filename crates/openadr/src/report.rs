//! The OpenADR reports the VEN posts (pure): an interval's measured performance, from the
//! gateway's own signed performance report, as `USAGE` (kWh), `DEMAND` and `BASELINE` (kW)
//! per measured interval and load; and an opt-out naming the intervals the gateway will not
//! follow.

use gridgate_proto::v1 as pb;
use serde_json::{Value, json};

/// A report's name: unique per VEN and event, so a report already on the VTN is known again
/// after a restart (the VEN looks before it posts).
pub fn performance_name(dr_id: &str) -> String {
    format!("gridgate-performance/{dr_id}")
}

/// The opt-out's name.
pub fn opt_out_name(vtn_event_id: &str, generation: u32) -> String {
    format!("gridgate-opt-out/{vtn_event_id}/{generation}")
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `PT<n>S`.
pub(crate) fn iso_seconds(s: i64) -> String {
    format!("PT{}S", s.max(0))
}

fn descriptors() -> Value {
    json!([
        {"payloadType": "USAGE", "units": "KWH"},
        {"payloadType": "DEMAND", "units": "KW"},
        {"payloadType": "BASELINE", "units": "KW"},
    ])
}

/// The performance of one gateway DR event (one VTN interval) as an OpenADR report: a
/// resource per load, an interval per measured interval of the shortest length the program
/// measures.
pub fn performance(
    vtn_event_id: &str,
    client_name: &str,
    dr_id: &str,
    report: &pb::PerformanceReport,
) -> Value {
    let resources: Vec<Value> = report
        .loads
        .iter()
        .map(|l| {
            let series = l.series.iter().min_by_key(|s| s.length_s);
            let intervals: Vec<Value> = series
                .map(|s| s.intervals.as_slice())
                .unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(i, iv)| {
                    let hours = (iv.end_ms - iv.start_ms) as f64 / 3_600_000.0;
                    let actual_kw = iv.actual_w as f64 / 1000.0;
                    json!({
                        "id": i,
                        "intervalPeriod": {
                            "start": rfc3339(iv.start_ms),
                            "duration": iso_seconds((iv.end_ms - iv.start_ms) / 1000),
                        },
                        "payloads": [
                            {"type": "USAGE", "values": [actual_kw * hours]},
                            {"type": "DEMAND", "values": [actual_kw]},
                            {"type": "BASELINE", "values": [iv.baseline_w as f64 / 1000.0]},
                        ],
                    })
                })
                .collect();
            json!({"resourceName": l.load, "intervals": intervals})
        })
        .collect();
    json!({
        "objectType": "REPORT",
        "eventID": vtn_event_id,
        "clientName": client_name,
        "reportName": performance_name(dr_id),
        "payloadDescriptors": descriptors(),
        "resources": resources,
    })
}

/// An interval of a VTN event the gateway will not follow, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct OptedOut {
    /// The interval's id in the VTN event.
    pub interval_id: i32,
    /// Its period, ms since the epoch (equal when the event was refused before its intervals
    /// could be read: then it is when the gateway refused it).
    pub start_ms: i64,
    pub end_ms: i64,
    /// What the desk or the mapping said.
    pub reason: String,
}

/// An opt-out: the intervals of a VTN event's version the gateway will not follow (all of
/// them when it refused the event whole), each with a private `OPT_OUT` payload carrying the
/// reason, on the aggregated resource.
pub fn opt_out(
    vtn_event_id: &str,
    client_name: &str,
    generation: u32,
    intervals: &[OptedOut],
) -> Value {
    let intervals: Vec<Value> = intervals
        .iter()
        .map(|i| {
            json!({
                "id": i.interval_id,
                "intervalPeriod": {
                    "start": rfc3339(i.start_ms),
                    "duration": iso_seconds((i.end_ms - i.start_ms) / 1000),
                },
                "payloads": [{"type": "OPT_OUT", "values": [i.reason]}],
            })
        })
        .collect();
    json!({
        "objectType": "REPORT",
        "eventID": vtn_event_id,
        "clientName": client_name,
        "reportName": opt_out_name(vtn_event_id, generation),
        "resources": [{"resourceName": "AGGREGATED_REPORT", "intervals": intervals}],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use openleadr_wire::report::ReportRequest;

    fn perf() -> pb::PerformanceReport {
        let iv = |start_ms: i64, baseline_w: i64, actual_w: i64| pb::IntervalPerformance {
            start_ms,
            end_ms: start_ms + 60_000,
            baseline_w,
            actual_w,
            reduction_w: baseline_w - actual_w,
            samples: 60,
            complete: true,
        };
        pb::PerformanceReport {
            event_id: "ev-1/0/3".into(),
            loads: vec![pb::LoadPerformance {
                load: "chiller".into(),
                series: vec![
                    pb::IntervalSeries {
                        length_s: 900,
                        intervals: vec![],
                    },
                    pb::IntervalSeries {
                        length_s: 60,
                        intervals: vec![
                            iv(1_800_000_000_000, 30_000, 18_000),
                            iv(1_800_000_060_000, 30_000, 20_000),
                        ],
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn performance_is_a_valid_openadr_report_with_kw_and_kwh() {
        let v = performance("ev-1", "site-042", "ev-1/0/3", &perf());
        let r: ReportRequest = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(r.event_id.as_str(), "ev-1");
        assert_eq!(
            r.report_name.as_deref(),
            Some("gridgate-performance/ev-1/0/3")
        );
        assert_eq!(r.resources.len(), 1);
        let iv = &v["resources"][0]["intervals"][0];
        assert_eq!(iv["intervalPeriod"]["duration"], "PT60S");
        assert_eq!(iv["payloads"][1]["values"][0], 18.0);
        assert_eq!(iv["payloads"][2]["values"][0], 30.0);
        // 18 kW for a minute.
        let kwh = iv["payloads"][0]["values"][0].as_f64().unwrap();
        assert!((kwh - 0.3).abs() < 1e-9, "{kwh}");
        assert_eq!(v["resources"][0]["intervals"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn opt_out_is_a_valid_openadr_report_naming_each_refused_interval() {
        let refused = |interval_id: i32, reason: &str| OptedOut {
            interval_id,
            start_ms: 1_800_000_000_000 + i64::from(interval_id) * 900_000,
            end_ms: 1_800_000_900_000 + i64::from(interval_id) * 900_000,
            reason: reason.into(),
        };
        let v = opt_out(
            "ev-2",
            "site-042",
            1,
            &[
                refused(1, "load \"ems\": below min_setpoint"),
                refused(3, "max_events_per_day"),
            ],
        );
        let r: ReportRequest = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(r.report_name.as_deref(), Some("gridgate-opt-out/ev-2/1"));
        let intervals = &v["resources"][0]["intervals"];
        assert_eq!(intervals[0]["id"], 1);
        assert_eq!(intervals[1]["id"], 3);
        assert_eq!(intervals[1]["intervalPeriod"]["duration"], "PT900S");
        assert_eq!(
            intervals[0]["payloads"][0]["values"][0],
            "load \"ems\": below min_setpoint"
        );
    }
}
