//! Telemetry a program asks for (pure): an event's `reportDescriptors` become a plan of
//! reports, each over a run of the event's intervals, of what the loads' meters measured
//! (`USAGE` in kWh, `DEMAND` in kW). The VEN measures and posts each report once its last
//! interval is over and measured.
//!
//! The part of OpenADR 3's report request the gateway follows: historical reports of `USAGE`
//! and `DEMAND`, per load or aggregated, from `startInterval`, `numIntervals` intervals a
//! report, a report every `frequency` intervals, at most `repeat` reports. A forecast, or
//! another payload type, is counted as unmapped and left alone: the gateway measures, it does
//! not predict.

use openleadr_wire::Event;
use openleadr_wire::report::{ReportDescriptor, ReportType};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::map::Planned;

/// What a report carries per interval and resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Measure {
    /// Energy over the interval, kWh.
    Usage,
    /// Mean power over the interval, kW.
    Demand,
}

impl Measure {
    /// The OpenADR payload type.
    pub fn payload_type(self) -> &'static str {
        match self {
            Measure::Usage => "USAGE",
            Measure::Demand => "DEMAND",
        }
    }

    fn units(self) -> &'static str {
        match self {
            Measure::Usage => "KWH",
            Measure::Demand => "KW",
        }
    }

    /// The value for a mean power of `kw` over `[start_ms, end_ms)`.
    pub fn value(self, kw: f64, start_ms: i64, end_ms: i64) -> f64 {
        match self {
            Measure::Usage => kw * (end_ms - start_ms) as f64 / 3_600_000.0,
            Measure::Demand => kw,
        }
    }
}

/// One of the event's intervals as a report covers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// The interval's id in the event.
    pub interval_id: i32,
    /// Start and end, ms since the epoch.
    pub start_ms: i64,
    pub end_ms: i64,
}

/// The reports one descriptor asks for, and how many of them are queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The descriptor's place in the event's `reportDescriptors` (in the report's name).
    pub descriptor: usize,
    pub measure: Measure,
    /// The gateway loads whose meters are reported.
    pub loads: Vec<String>,
    /// One resource, `AGGREGATED_REPORT`, summing the loads; else one per load.
    pub aggregate: bool,
    /// Each report's intervals, in the order they are due.
    pub reports: Vec<Vec<Span>>,
    /// How many of `reports` are queued (they are queued in order).
    pub queued: usize,
}

impl Request {
    /// The next report to queue, if its last interval ended before `before_ms`.
    pub fn due(&self, before_ms: i64) -> Option<&[Span]> {
        let next = self.reports.get(self.queued)?;
        (next.last()?.end_ms <= before_ms).then_some(next.as_slice())
    }
}

/// A report's name: unique per VEN, event version, descriptor and report.
pub fn report_name(vtn_event_id: &str, generation: u32, descriptor: usize, n: usize) -> String {
    format!("gridgate-telemetry/{vtn_event_id}/{generation}/{descriptor}/{n}")
}

/// The reports `event` asks for over its `intervals` (as translated), for `loads` (the loads
/// the event selected, which a descriptor's own targets narrow), and the descriptors left
/// alone, by payload type, for the unmapped counter.
pub fn requests(
    event: &Event,
    intervals: &[Planned],
    loads: &[String],
) -> (Vec<Request>, Vec<String>) {
    let mut out = Vec::new();
    let mut unmapped = Vec::new();
    let spans: Vec<Span> = intervals
        .iter()
        .map(|i| Span {
            interval_id: i.interval_id,
            start_ms: i.start_ms,
            end_ms: i.end_ms,
        })
        .collect();
    for (n, d) in event
        .content
        .report_descriptors
        .iter()
        .flatten()
        .enumerate()
    {
        let measure = match &d.payload_type {
            ReportType::Usage if d.historical => Measure::Usage,
            ReportType::Demand if d.historical => Measure::Demand,
            other => {
                let name = serde_json::to_value(other)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("{other:?}"));
                let what = if d.historical {
                    format!("report {name}")
                } else {
                    format!("report {name} forecast")
                };
                if !unmapped.contains(&what) {
                    unmapped.push(what);
                }
                continue;
            }
        };
        let named: Vec<String> = match d.targets.as_deref() {
            None | Some([]) => loads.to_vec(),
            Some(targets) => loads
                .iter()
                .filter(|l| targets.iter().any(|t| t.as_str() == l.as_str()))
                .cloned()
                .collect(),
        };
        // A descriptor for other VENs' resources (or none of the loads followed here).
        if named.is_empty() || spans.is_empty() {
            continue;
        }
        out.push(Request {
            descriptor: n,
            measure,
            loads: named,
            aggregate: d.aggregate,
            reports: chunks(d, &spans),
            queued: 0,
        });
    }
    (out, unmapped)
}

/// The reports of a descriptor over `spans`: from `startInterval` (-1: a single report at
/// the end, over the last `numIntervals` or all), `numIntervals` each (-1: all), one every
/// `frequency` intervals (-1: every `numIntervals`), `repeat` of them at most (-1: all).
fn chunks(d: &ReportDescriptor, spans: &[Span]) -> Vec<Vec<Span>> {
    let all = spans.len();
    let take = |n: i32| usize::try_from(n).ok().filter(|n| *n > 0);
    let size = take(d.num_intervals).unwrap_or(all).min(all);
    if d.start_interval < 0 {
        return vec![spans[all - size..].to_vec()];
    }
    let first = usize::try_from(d.start_interval).unwrap_or(0).min(all - 1);
    let every = take(d.frequency).unwrap_or(size).max(1);
    let limit = take(d.repeat).unwrap_or(usize::MAX);
    // Historical data exists once an interval is over: each report covers a run of `size`
    // intervals from its own start and goes when the run's last interval has ended.
    (first..all)
        .step_by(every)
        .map(|k| {
            let last = (k + size).min(all);
            spans[k..last].to_vec()
        })
        .take(limit)
        .collect()
}

/// A resource's measured values: its name and a value per interval measured.
pub type Measured = (String, Vec<(Span, f64)>);

/// A telemetry report: per resource, per interval, the measured value (an interval with no
/// sample of a meter is left out of that resource).
pub fn report(
    vtn_event_id: &str,
    client_name: &str,
    name: &str,
    measure: Measure,
    resources: &[Measured],
) -> Value {
    let resources: Vec<Value> = resources
        .iter()
        .map(|(resource, values)| {
            let intervals: Vec<Value> = values
                .iter()
                .map(|(s, v)| {
                    json!({
                        "id": s.interval_id,
                        "intervalPeriod": {
                            "start": chrono::DateTime::from_timestamp_millis(s.start_ms)
                                .unwrap_or_default()
                                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                            "duration": crate::report::iso_seconds((s.end_ms - s.start_ms) / 1000),
                        },
                        "payloads": [{"type": measure.payload_type(), "values": [v]}],
                    })
                })
                .collect();
            json!({"resourceName": resource, "intervals": intervals})
        })
        .collect();
    json!({
        "objectType": "REPORT",
        "eventID": vtn_event_id,
        "clientName": client_name,
        "reportName": name,
        "payloadDescriptors": [{
            "payloadType": measure.payload_type(),
            "readingType": "MEAN",
            "units": measure.units(),
        }],
        "resources": resources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(descriptors: &str, n: i32) -> (Event, Vec<Planned>) {
        let e: Event = serde_json::from_str(&format!(
            r#"{{"id":"ev-9","createdDateTime":"2027-01-15T07:00:00Z",
               "modificationDateTime":"2027-01-15T07:00:00Z","objectType":"EVENT",
               "programID":"p1","reportDescriptors":{descriptors},
               "intervalPeriod":{{"start":"2027-01-15T08:00:00Z","duration":"PT15M"}},
               "intervals":[]}}"#
        ))
        .unwrap();
        let intervals = (0..n)
            .map(|i| Planned {
                interval_id: i,
                start_ms: 1_000_000 + i64::from(i) * 900_000,
                end_ms: 1_900_000 + i64::from(i) * 900_000,
                targets: Vec::new(),
                price: None,
            })
            .collect();
        (e, intervals)
    }

    fn ids(r: &Request) -> Vec<Vec<i32>> {
        r.reports
            .iter()
            .map(|c| c.iter().map(|s| s.interval_id).collect())
            .collect()
    }

    fn loads() -> Vec<String> {
        vec!["chiller".into(), "ems".into()]
    }

    #[test]
    fn by_default_one_report_of_every_interval_at_the_end() {
        let (e, iv) = event(r#"[{"payloadType":"USAGE"}]"#, 4);
        let (r, unmapped) = requests(&e, &iv, &loads());
        assert!(unmapped.is_empty());
        assert_eq!(r.len(), 1);
        assert_eq!(ids(&r[0]), vec![vec![0, 1, 2, 3]]);
        assert_eq!(r[0].measure, Measure::Usage);
        assert_eq!(r[0].loads, loads());
        assert!(r[0].due(iv[3].end_ms - 1).is_none());
        assert_eq!(r[0].due(iv[3].end_ms).map(<[Span]>::len), Some(4));
    }

    #[test]
    fn from_a_start_interval_a_report_every_frequency_at_most_repeat() {
        let d = r#"[{"payloadType":"DEMAND","startInterval":1,"numIntervals":2,
                     "frequency":2,"repeat":-1,"aggregate":true}]"#;
        let (e, iv) = event(d, 6);
        let (r, _) = requests(&e, &iv, &loads());
        assert_eq!(ids(&r[0]), vec![vec![1, 2], vec![3, 4], vec![5]]);
        assert!(r[0].aggregate);
        let d = r#"[{"payloadType":"DEMAND","startInterval":0,"numIntervals":1,"repeat":2}]"#;
        let (e, iv) = event(d, 6);
        let (r, _) = requests(&e, &iv, &loads());
        assert_eq!(ids(&r[0]), vec![vec![0], vec![1]]);
        // The last few intervals when the report is at the end.
        let d = r#"[{"payloadType":"USAGE","numIntervals":2}]"#;
        let (e, iv) = event(d, 5);
        let (r, _) = requests(&e, &iv, &loads());
        assert_eq!(ids(&r[0]), vec![vec![3, 4]]);
    }

    #[test]
    fn targets_narrow_the_loads_and_what_is_not_measured_is_counted() {
        let d = r#"[{"payloadType":"DEMAND","targets":["ems"]},
                    {"payloadType":"USAGE","historical":false},
                    {"payloadType":"STORAGE_CHARGE_LEVEL"},
                    {"payloadType":"USAGE","targets":["another-site"]}]"#;
        let (e, iv) = event(d, 2);
        let (r, unmapped) = requests(&e, &iv, &loads());
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].loads, ["ems"]);
        assert_eq!(r[0].descriptor, 0);
        assert_eq!(
            unmapped,
            ["report USAGE forecast", "report STORAGE_CHARGE_LEVEL"]
        );
    }

    #[test]
    fn the_report_is_a_valid_openadr_report() {
        let span = Span {
            interval_id: 3,
            start_ms: 1_800_000_000_000,
            end_ms: 1_800_000_900_000,
        };
        let v = report(
            "ev-9",
            "site-042",
            &report_name("ev-9", 0, 1, 2),
            Measure::Usage,
            &[(
                "chiller".into(),
                vec![(span, Measure::Usage.value(40.0, span.start_ms, span.end_ms))],
            )],
        );
        let r: openleadr_wire::report::ReportRequest = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(
            r.report_name.as_deref(),
            Some("gridgate-telemetry/ev-9/0/1/2")
        );
        let iv = &v["resources"][0]["intervals"][0];
        assert_eq!(iv["id"], 3);
        assert_eq!(iv["payloads"][0]["type"], "USAGE");
        // 40 kW for 15 minutes.
        assert_eq!(iv["payloads"][0]["values"][0], 10.0);
        assert_eq!(v["payloadDescriptors"][0]["units"], "KWH");
    }
}
