//! Decoding what a field device publishes. Pure code: bytes in, readings or a reason out.
//!
//! JSON, one reading or several:
//!
//! ```json
//! {"point": "temperature", "value": 21.5}
//! {"point": "temperature", "value": 21.5, "ts_ms": 1795558337000, "quality": "good"}
//! [{"point": "temperature", "value": 21.5}, {"point": "door", "value": true}]
//! {"readings": [{"point": "temperature", "value": 21.5}]}
//! ```
//!
//! `point` is the point's name under the device that owns the topic; `value` a number, a
//! boolean or a string; `ts_ms` (optional, default: arrival) milliseconds since the Unix
//! epoch; `quality` (optional, default `good`) one of the gateway's qualities; a reading
//! whose quality is not good carries no value. Anything else is a protobuf
//! `gridgate.v1.ReadingList`. A payload with any bad part is refused whole.

use gridgate_proto::v1 as pb;
use prost::Message;
use serde::Deserialize;
use thiserror::Error;

use gridgate_config::MqttDevice;
use gridgate_core::{Quality, Reading, Value};

/// Why a payload was refused.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum PayloadError {
    /// Larger than the configured limit.
    #[error("payload of {size} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not JSON of the documented shape.
    #[error("malformed JSON: {0}")]
    Json(String),
    /// Not a protobuf ReadingList.
    #[error("malformed protobuf ReadingList: {0}")]
    Protobuf(String),
    /// No readings in it.
    #[error("no readings in the payload")]
    Empty,
    /// A point the device does not have in the config.
    #[error("unknown point {point:?} for device {device:?}")]
    UnknownPoint {
        device: String,
        /// Point named in the payload.
        point: String,
    },
    /// A value or field of the wrong kind.
    #[error("reading {index}: {reason}")]
    Bad {
        /// Position in the payload.
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

impl PayloadError {
    /// A short name for counters.
    pub fn kind(&self) -> &'static str {
        match self {
            PayloadError::TooLarge { .. } => "too_large",
            PayloadError::Json(_) => "json",
            PayloadError::Protobuf(_) => "protobuf",
            PayloadError::Empty => "empty",
            PayloadError::UnknownPoint { .. } => "unknown_point",
            PayloadError::Bad { .. } => "bad_value",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonReading {
    point: String,
    #[serde(default)]
    value: serde_json::Value,
    ts_ms: Option<i64>,
    quality: Option<String>,
}

/// Earliest timestamp accepted: 2000-01-01.
const TS_MIN: i64 = 946_684_800_000;
/// How far in the future a device clock may run: one day.
const TS_AHEAD: i64 = 86_400_000;

/// A decoded payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The readings, full point names.
    pub readings: Vec<Reading>,
    /// Every reading carried the device's own timestamp (so a redelivery can be recognised).
    pub device_time: bool,
}

/// Decodes `payload` from `device` into readings stamped `now_ms` where they carry no time.
pub fn decode(
    payload: &[u8],
    device: &MqttDevice,
    max: usize,
    now_ms: i64,
) -> Result<Decoded, PayloadError> {
    if payload.len() > max {
        return Err(PayloadError::TooLarge {
            size: payload.len(),
            max,
        });
    }
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    let raw: Vec<(String, Option<Value>, Option<i64>, Quality)> = match first {
        None => return Err(PayloadError::Empty),
        Some(b'{') | Some(b'[') => decode_json(payload)?,
        Some(_) => decode_protobuf(payload)?,
    };
    if raw.is_empty() {
        return Err(PayloadError::Empty);
    }
    let device_time = raw.iter().all(|r| r.2.is_some());
    let mut out = Vec::with_capacity(raw.len());
    for (index, (point, value, ts, quality)) in raw.into_iter().enumerate() {
        let Some(unit) = device.unit_of(&point) else {
            return Err(PayloadError::UnknownPoint {
                device: device.name.clone(),
                point,
            });
        };
        let ts = ts.unwrap_or(now_ms);
        if !(TS_MIN..=now_ms + TS_AHEAD).contains(&ts) {
            return Err(PayloadError::Bad {
                index,
                reason: format!("ts_ms {ts} is not a time between 2000 and tomorrow"),
            });
        }
        let id = format!("{}/{point}", device.name);
        out.push(match (quality, value) {
            (Quality::Good, Some(v)) => Reading::good(id, ts, v, unit),
            (Quality::Good, None) => {
                return Err(PayloadError::Bad {
                    index,
                    reason: "a good reading needs a value".into(),
                });
            }
            (q, _) => Reading::bad(id, ts, q, unit, "reported by the device".into()),
        });
    }
    Ok(Decoded {
        readings: out,
        device_time,
    })
}

type Raw = (String, Option<Value>, Option<i64>, Quality);

fn decode_json(payload: &[u8]) -> Result<Vec<Raw>, PayloadError> {
    // Straight into readings; only a payload that does not parse so is taken apart again
    // through a JSON tree, for the reason and the reading it names. Through the tree always,
    // each reading's keys and strings were allocated twice (a fifth of ingest's time).
    let items = match serde_json::from_slice::<Shape>(payload) {
        Ok(Shape(items)) => items,
        Err(_) => return decode_json_tree(payload),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, r)| raw_of(i, r))
        .collect()
}

/// A payload of one of the documented shapes, as its readings.
struct Shape(Vec<JsonReading>);

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ShapeVisitor)
    }
}

struct ShapeVisitor;

impl<'de> serde::de::Visitor<'de> for ShapeVisitor {
    type Value = Shape;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a reading, an array of readings or {\"readings\": [...]}")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(16).min(4096));
        while let Some(r) = seq.next_element::<JsonReading>()? {
            out.push(r);
        }
        Ok(Shape(out))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        use serde::de::Error;
        let mut point = None;
        let mut value = None;
        let mut ts_ms = None;
        let mut quality = None;
        let mut readings = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "readings" if readings.is_none() => readings = Some(map.next_value()?),
                "point" if point.is_none() => point = Some(map.next_value()?),
                "value" if value.is_none() => value = Some(map.next_value()?),
                "ts_ms" if ts_ms.is_none() => ts_ms = Some(map.next_value()?),
                "quality" if quality.is_none() => quality = Some(map.next_value()?),
                other => return Err(A::Error::custom(format!("unexpected key {other}"))),
            }
        }
        match (readings, point) {
            (Some(items), None) if value.is_none() && ts_ms.is_none() && quality.is_none() => {
                Ok(Shape(items))
            }
            (None, Some(point)) => Ok(Shape(vec![JsonReading {
                point,
                value: value.unwrap_or_default(),
                ts_ms: ts_ms.flatten(),
                quality: quality.flatten(),
            }])),
            _ => Err(A::Error::custom("not a documented shape")),
        }
    }
}

/// The documented shapes through a JSON tree: slower, and says what is wrong and where.
fn decode_json_tree(payload: &[u8]) -> Result<Vec<Raw>, PayloadError> {
    let json: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| PayloadError::Json(e.to_string()))?;
    let items = match json {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(mut o) if o.contains_key("readings") => {
            match o.remove("readings") {
                Some(serde_json::Value::Array(a)) if o.is_empty() => a,
                _ => {
                    return Err(PayloadError::Json(
                        "\"readings\" must be the only key and hold an array".into(),
                    ));
                }
            }
        }
        obj @ serde_json::Value::Object(_) => vec![obj],
        _ => {
            return Err(PayloadError::Json(
                "expected an object or an array of objects".into(),
            ));
        }
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let r: JsonReading = serde_json::from_value(item).map_err(|e| PayloadError::Bad {
                index,
                reason: e.to_string(),
            })?;
            raw_of(index, r)
        })
        .collect()
}

/// Reading `index` of a JSON payload, checked.
fn raw_of(index: usize, r: JsonReading) -> Result<Raw, PayloadError> {
    let bad = |reason: String| PayloadError::Bad { index, reason };
    let quality = match &r.quality {
        None => Quality::Good,
        Some(q) => q.parse::<Quality>().map_err(bad)?,
    };
    let value = match r.value {
        serde_json::Value::Null => None,
        serde_json::Value::Bool(b) => Some(Value::Bool(b)),
        serde_json::Value::Number(n) => match n.as_f64().filter(|f| f.is_finite()) {
            Some(f) => Some(Value::Number(f)),
            None => return Err(bad(format!("value {n} is not a finite number"))),
        },
        serde_json::Value::String(s) if s.len() <= MAX_TEXT => Some(Value::Text(s)),
        serde_json::Value::String(_) => {
            return Err(bad(format!("text value longer than {MAX_TEXT} bytes")));
        }
        other => {
            return Err(bad(format!(
                "value must be a number, boolean or string, not {other}"
            )));
        }
    };
    Ok((r.point, value, r.ts_ms, quality))
}

/// Longest text value, bytes: a reading is a measurement, not a document, and both
/// encodings are held to it.
const MAX_TEXT: usize = 256;

fn decode_protobuf(payload: &[u8]) -> Result<Vec<Raw>, PayloadError> {
    let list =
        pb::ReadingList::decode(payload).map_err(|e| PayloadError::Protobuf(e.to_string()))?;
    list.readings
        .into_iter()
        .enumerate()
        .map(|(index, r)| {
            let bad = |reason: String| PayloadError::Bad { index, reason };
            let quality = match r.quality.as_ref() {
                None => Quality::Good,
                Some(q) => Quality::from_pb(Some(q)),
            };
            let value = match r.value {
                None => None,
                Some(pb::reading::Value::Number(n)) if n.is_finite() => Some(Value::Number(n)),
                Some(pb::reading::Value::Number(n)) => {
                    return Err(bad(format!("value {n} is not a finite number")));
                }
                Some(pb::reading::Value::Flag(b)) => Some(Value::Bool(b)),
                Some(pb::reading::Value::Text(t)) if t.len() <= MAX_TEXT => Some(Value::Text(t)),
                Some(pb::reading::Value::Text(_)) => {
                    return Err(bad(format!("text value longer than {MAX_TEXT} bytes")));
                }
            };
            Ok((r.point, value, (r.ts_ms != 0).then_some(r.ts_ms), quality))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_558_337_000;

    fn dev() -> MqttDevice {
        MqttDevice::new(
            "sensor-1".into(),
            "field/sensor-1".into(),
            vec![
                ("temperature".into(), "°C".into()),
                ("door".into(), String::new()),
            ],
        )
    }

    fn ok(p: &[u8]) -> Vec<Reading> {
        decode(p, &dev(), 4096, NOW).unwrap().readings
    }

    fn err(p: &[u8]) -> PayloadError {
        decode(p, &dev(), 4096, NOW).unwrap_err()
    }

    #[test]
    fn the_documented_json_shapes() {
        let r = ok(br#"{"point":"temperature","value":21.5}"#);
        assert_eq!(
            r,
            vec![Reading::good(
                "sensor-1/temperature",
                NOW,
                Value::Number(21.5),
                "°C"
            )]
        );
        let r = ok(br#"[{"point":"temperature","value":21.5,"ts_ms":1795558336000},{"point":"door","value":true}]"#);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].ts_ms, 1_795_558_336_000);
        let d = decode(
            br#"{"point":"door","value":false,"ts_ms":1795558336000}"#,
            &dev(),
            4096,
            NOW,
        )
        .unwrap();
        assert!(d.device_time);
        assert!(
            !decode(br#"{"point":"door","value":false}"#, &dev(), 4096, NOW)
                .unwrap()
                .device_time
        );
        assert_eq!(r[1].value, Some(Value::Bool(true)));
        let r = ok(br#"{"readings":[{"point":"door","quality":"timeout"}]}"#);
        assert_eq!(r[0].quality, Quality::Timeout);
        assert_eq!(r[0].value, None);
    }

    /// The direct parse and the tree agree on every shape, good or bad: the direct one only
    /// makes the common case cheaper.
    #[test]
    fn the_direct_parse_reads_what_the_tree_reads() {
        let payloads: [&[u8]; 12] = [
            br#"{"point":"temperature","value":21.5}"#,
            br#"{"value":21.5,"quality":"good","ts_ms":1795558336000,"point":"temperature"}"#,
            br#"[{"point":"temperature","value":21.5,"ts_ms":1795558336000},{"point":"door","value":true}]"#,
            br#"{"readings":[{"point":"door","quality":"timeout"},{"point":"door","value":"open \u00e9"}]}"#,
            br#"{"point":"door","value":null,"ts_ms":null,"quality":null}"#,
            br#"{"readings":[],"point":"door"}"#,
            br#"{"readings":{"point":"door"}}"#,
            br#"[{"point":"door","value":1},{"point":"door","value":[1]}]"#,
            br#"[{"point":"door","value":1,"extra":2}]"#,
            br#"{"point":"door","point":"temperature","value":1}"#,
            br#"[1,2]"#,
            br#"{}"#,
        ];
        for p in payloads {
            assert_eq!(
                decode_json(p),
                decode_json_tree(p),
                "{}",
                String::from_utf8_lossy(p)
            );
        }
    }

    #[test]
    fn protobuf_reading_list() {
        let list = pb::ReadingList {
            readings: vec![pb::Reading {
                point: "temperature".into(),
                value: Some(pb::reading::Value::Number(19.0)),
                ..Default::default()
            }],
        };
        let r = ok(&list.encode_to_vec());
        assert_eq!(r[0].value, Some(Value::Number(19.0)));
        assert_eq!(r[0].ts_ms, NOW);
        // Held to the same limits as JSON: a long text and a NaN are refused, not stored.
        for value in [
            pb::reading::Value::Text("x".repeat(1_000)),
            pb::reading::Value::Number(f64::NAN),
        ] {
            let list = pb::ReadingList {
                readings: vec![pb::Reading {
                    point: "temperature".into(),
                    value: Some(value),
                    ..Default::default()
                }],
            };
            assert_eq!(err(&list.encode_to_vec()).kind(), "bad_value");
        }
    }

    #[test]
    fn bad_payloads_are_refused_with_a_reason() {
        assert_eq!(err(b"{\"point\":").kind(), "json");
        assert_eq!(
            err(br#"{"point":"temperature","value":"hot","extra":1}"#).kind(),
            "bad_value"
        );
        assert_eq!(
            err(br#"{"point":"temperature","value":[1]}"#).kind(),
            "bad_value"
        );
        assert_eq!(err(br#"{"point":"temperature"}"#).kind(), "bad_value");
        assert_eq!(
            err(br#"{"point":"temperature","value":1,"ts_ms":"now"}"#).kind(),
            "bad_value"
        );
        assert_eq!(
            err(br#"{"point":"temperature","value":1,"ts_ms":5}"#).kind(),
            "bad_value"
        );
        assert_eq!(
            err(br#"{"point":"temperature","value":1,"quality":"meh"}"#).kind(),
            "bad_value"
        );
        assert_eq!(
            err(br#"{"point":"humidity","value":1}"#).kind(),
            "unknown_point"
        );
        assert_eq!(err(br#"[]"#).kind(), "empty");
        assert_eq!(err(b"   ").kind(), "empty");
        assert_eq!(err(b"\x08\xff\xff").kind(), "protobuf");
        // One bad reading spoils the whole payload: nothing of it is stored.
        assert_eq!(
            err(br#"[{"point":"temperature","value":1},{"point":"nope","value":2}]"#).kind(),
            "unknown_point"
        );
        let big = vec![b' '; 5000];
        assert_eq!(
            err(&big),
            PayloadError::TooLarge {
                size: 5000,
                max: 4096
            }
        );
    }
}
