//! Readings: what acquisition produces for every point it polls, good or not.

use std::fmt;
use std::sync::Arc;

use serde::{Serialize, Serializer};

/// A measured value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    /// A number in engineering units.
    Number(f64),
    /// A bit.
    Bool(bool),
    /// A date, time, address, or raw bytes as hex.
    Text(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Number(n) => write!(f, "{n}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Text(t) => f.write_str(t),
        }
    }
}

/// Whether a reading is good, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quality {
    /// Read and decoded.
    Good,
    /// No reply in time.
    Timeout,
    /// A reply with a wrong checksum or CRC, or cut short.
    Crc,
    /// A Modbus exception reply, with its code.
    Exception(u8),
    /// A DL/T 645 abnormal reply, with its error word.
    MeterError(u16),
    /// A reply whose value could not be decoded.
    DecodeError,
    /// Not read this round (the device is offline and was not probed).
    Offline,
    /// The line itself is down (port missing, TCP refused).
    LinkDown,
    /// An old value (reserved for later stages).
    Stale,
}

impl Quality {
    /// True for [`Quality::Good`].
    pub fn is_good(self) -> bool {
        self == Quality::Good
    }

    /// A short name for counters and logs: `good`, `timeout`, `crc`, `exception`...
    pub fn kind(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Timeout => "timeout",
            Quality::Crc => "crc",
            Quality::Exception(_) => "exception",
            Quality::MeterError(_) => "meter_error",
            Quality::DecodeError => "decode_error",
            Quality::Offline => "offline",
            Quality::LinkDown => "link_down",
            Quality::Stale => "stale",
        }
    }
}

impl fmt::Display for Quality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quality::Exception(c) => write!(f, "exception:{c:02x}"),
            Quality::MeterError(w) => write!(f, "meter_error:{w:02x}"),
            other => f.write_str(other.kind()),
        }
    }
}

impl std::str::FromStr for Quality {
    type Err = String;
    /// Parses what [`Quality`]'s `Display` writes: `good`, `timeout`, `exception:02`...
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let code = |hex: &str| {
            u16::from_str_radix(hex, 16).map_err(|_| format!("bad code in quality {s:?}"))
        };
        Ok(match s.split_once(':') {
            Some(("exception", c)) => Quality::Exception(
                u8::try_from(code(c)?).map_err(|_| format!("bad code in {s:?}"))?,
            ),
            Some(("meter_error", c)) => Quality::MeterError(code(c)?),
            Some(_) => return Err(format!("unknown quality {s:?}")),
            None => match s {
                "good" => Quality::Good,
                "timeout" => Quality::Timeout,
                "crc" => Quality::Crc,
                "decode_error" => Quality::DecodeError,
                "offline" => Quality::Offline,
                "link_down" => Quality::LinkDown,
                "stale" => Quality::Stale,
                _ => {
                    return Err(format!(
                        "unknown quality {s:?}; use good, timeout, crc, exception:NN, meter_error:NN, decode_error, offline, link_down or stale"
                    ));
                }
            },
        })
    }
}

impl Serialize for Quality {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One point's outcome at one moment.
///
/// The name and unit are shared (`Arc<str>`): a bus makes each point's once and every
/// reading of it holds a reference, where a copy was two allocations a reading.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reading {
    /// `device/point`.
    pub point: Arc<str>,
    /// Milliseconds since the Unix epoch, UTC, when the reply arrived (or the read failed).
    pub ts_ms: i64,
    /// The value; `None` unless the quality is good.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// Engineering unit.
    #[serde(skip_serializing_if = "no_unit")]
    pub unit: Arc<str>,
    /// Good, or why not.
    pub quality: Quality,
    /// Error detail for a bad reading.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn no_unit(unit: &Arc<str>) -> bool {
    unit.is_empty()
}

impl Reading {
    /// A good reading.
    pub fn good(
        point: impl Into<Arc<str>>,
        ts_ms: i64,
        value: Value,
        unit: impl Into<Arc<str>>,
    ) -> Self {
        Reading {
            point: point.into(),
            ts_ms,
            value: Some(value),
            unit: unit.into(),
            quality: Quality::Good,
            error: None,
        }
    }

    /// A failed reading.
    pub fn bad(
        point: impl Into<Arc<str>>,
        ts_ms: i64,
        quality: Quality,
        unit: impl Into<Arc<str>>,
        error: String,
    ) -> Self {
        Reading {
            point: point.into(),
            ts_ms,
            value: None,
            unit: unit.into(),
            quality,
            error: Some(error),
        }
    }
}

/// Appends a length-delimited protobuf field: its key, the length, the bytes. prost's own
/// takes a `&String` or a `Vec<u8>`, where a reading's strings are shared `str`s and a batch
/// is framed from its readings' encodings.
pub fn encode_length_delimited(tag: u32, bytes: &[u8], buf: &mut Vec<u8>) {
    use prost::encoding::{WireType, encode_key, encode_varint};
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.extend_from_slice(bytes);
}

/// Microseconds since the Unix epoch now: for latencies a millisecond would round away.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_pb_gives_the_bytes_of_the_wire_form() {
        use prost::Message;
        let mut cases = vec![
            Reading::good("m/e", 1_700_000_000_123, Value::Number(12345.67), "kWh"),
            Reading::good("m/e", 0, Value::Number(0.0), ""),
            Reading::good("m/e", -5, Value::Number(-0.0), "kW"),
            Reading::good("m/f", 7, Value::Bool(false), ""),
            Reading::good("m/f", 7, Value::Bool(true), "x"),
            Reading::good("m/t", 7, Value::Text(String::new()), ""),
            Reading::good("m/t", 7, Value::Text("2026-12-07".into()), ""),
            Reading::good(String::new(), 0, Value::Number(f64::NAN), ""),
        ];
        for q in [
            Quality::Timeout,
            Quality::Crc,
            Quality::Exception(2),
            Quality::MeterError(0x40),
            Quality::DecodeError,
            Quality::Offline,
            Quality::LinkDown,
            Quality::Stale,
        ] {
            cases.push(Reading::bad("m/p", 9, q, "V", "no reply".into()));
            cases.push(Reading::bad("m/p", 9, q, "", String::new()));
        }
        for r in &cases {
            let mut buf = vec![0xAA];
            r.encode_pb(&mut buf);
            assert_eq!(buf[1..], r.to_pb().encode_to_vec()[..], "{r:?}");
        }
    }

    #[test]
    fn json_shape_is_what_consumers_parse() {
        let r = Reading::good("m/e", 1, Value::Number(12345.67), "kWh");
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"point":"m/e","ts_ms":1,"value":12345.67,"unit":"kWh","quality":"good"}"#
        );
        let r = Reading::bad(
            "m/p",
            2,
            Quality::Exception(2),
            "",
            "illegal data address".into(),
        );
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"point":"m/p","ts_ms":2,"quality":"exception:02","error":"illegal data address"}"#
        );
    }
}

mod wire {
    //! Conversion to and from the wire form (`gridgate.v1.Reading`).
    use gridgate_proto::v1 as pb;

    use super::{Quality, Reading, Value};

    impl Quality {
        /// The wire form.
        pub fn to_pb(self) -> pb::Quality {
            use pb::QualityKind as K;
            let (kind, code) = match self {
                Quality::Good => (K::Good, 0),
                Quality::Timeout => (K::Timeout, 0),
                Quality::Crc => (K::Crc, 0),
                Quality::Exception(c) => (K::Exception, u32::from(c)),
                Quality::MeterError(w) => (K::MeterError, u32::from(w)),
                Quality::DecodeError => (K::DecodeError, 0),
                Quality::Offline => (K::Offline, 0),
                Quality::LinkDown => (K::LinkDown, 0),
                Quality::Stale => (K::Stale, 0),
            };
            pb::Quality {
                kind: kind as i32,
                code,
            }
        }

        /// From the wire form; unknown kinds read as a decode error.
        pub fn from_pb(q: Option<&pb::Quality>) -> Quality {
            use pb::QualityKind as K;
            let Some(q) = q else {
                return Quality::DecodeError;
            };
            match K::try_from(q.kind).unwrap_or(K::Unspecified) {
                K::Good => Quality::Good,
                K::Timeout => Quality::Timeout,
                K::Crc => Quality::Crc,
                K::Exception => Quality::Exception(q.code as u8),
                K::MeterError => Quality::MeterError(q.code as u16),
                K::Offline => Quality::Offline,
                K::LinkDown => Quality::LinkDown,
                K::Stale => Quality::Stale,
                K::DecodeError | K::Unspecified | K::DeviceReported => Quality::DecodeError,
            }
        }
    }

    impl Reading {
        /// The wire form.
        pub fn to_pb(&self) -> pb::Reading {
            pb::Reading {
                point: self.point.to_string(),
                ts_ms: self.ts_ms,
                value: self.value.as_ref().map(|v| match v {
                    Value::Number(n) => pb::reading::Value::Number(*n),
                    Value::Bool(b) => pb::reading::Value::Flag(*b),
                    Value::Text(t) => pb::reading::Value::Text(t.clone()),
                }),
                unit: self.unit.to_string(),
                quality: Some(self.quality.to_pb()),
                error: self.error.clone().unwrap_or_default(),
            }
        }

        /// Appends the wire form's encoding: the bytes `self.to_pb().encode(buf)` gives,
        /// without first copying the strings into a `pb::Reading`. The store encodes every
        /// reading it is handed, and those copies were two allocations a reading.
        pub fn encode_pb(&self, buf: &mut Vec<u8>) {
            use prost::encoding::{bool as flag, double, int64, message};
            // proto3 leaves out a field at its default, but always encodes a oneof that is
            // set and a message that is present, as prost's derived encoding does.
            let text = |tag: u32, s: &str, buf: &mut Vec<u8>| {
                super::encode_length_delimited(tag, s.as_bytes(), buf)
            };
            if !self.point.is_empty() {
                text(1, &self.point, buf);
            }
            if self.ts_ms != 0 {
                int64::encode(2, &self.ts_ms, buf);
            }
            match &self.value {
                Some(Value::Number(n)) => double::encode(3, n, buf),
                Some(Value::Bool(b)) => flag::encode(4, b, buf),
                Some(Value::Text(t)) => text(5, t, buf),
                None => {}
            }
            if !self.unit.is_empty() {
                text(6, &self.unit, buf);
            }
            message::encode(7, &self.quality.to_pb(), buf);
            if let Some(e) = self.error.as_ref().filter(|e| !e.is_empty()) {
                text(8, e, buf);
            }
        }

        /// From the wire form.
        pub fn from_pb(r: &pb::Reading) -> Reading {
            Reading {
                point: r.point.as_str().into(),
                ts_ms: r.ts_ms,
                value: r.value.as_ref().map(|v| match v {
                    pb::reading::Value::Number(n) => Value::Number(*n),
                    pb::reading::Value::Flag(b) => Value::Bool(*b),
                    pb::reading::Value::Text(t) => Value::Text(t.clone()),
                }),
                unit: r.unit.as_str().into(),
                quality: Quality::from_pb(r.quality.as_ref()),
                error: (!r.error.is_empty()).then(|| r.error.clone()),
            }
        }
    }
}
