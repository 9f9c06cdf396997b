//! What the store needs of a reading it is handed, in either form a source has one: the
//! gateway's own [`Reading`] (polls and MQTT, shared with the live channel, so stored
//! without a copy) or the wire form (`pb::Reading`: tests, tools, readings read back).

use std::hash::{Hash, Hasher};

use gridgate_core::reading::{Quality, Reading, Value};
use gridgate_proto::v1 as pb;
use prost::Message;

/// A reading as the store takes it in.
pub trait StoreReading {
    /// `device/point`.
    fn point(&self) -> &str;
    /// Milliseconds since the epoch.
    fn ts_ms(&self) -> i64;
    /// The value, if the reading is good and holds a finite number: what a meter sample is.
    fn good_number(&self) -> Option<f64>;
    /// A hash of what the reading says (value and quality), the same for both forms: it is
    /// stored, and compared with after a restart.
    fn value_hash(&self) -> u64;
    /// Appends the wire form's encoding (the same bytes for both forms).
    fn encode_to(&self, buf: &mut Vec<u8>);
}

/// The hash of a wire-form quality and a value given as the wire form's variant.
fn hash_parts(quality: Option<&pb::Quality>, value: Option<ValueRef<'_>>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    quality.copied().hash(&mut h);
    match value {
        None => 0u8.hash(&mut h),
        Some(ValueRef::Number(n)) => (1u8, n.to_bits()).hash(&mut h),
        Some(ValueRef::Flag(b)) => (2u8, b).hash(&mut h),
        Some(ValueRef::Text(t)) => (3u8, t).hash(&mut h),
    }
    h.finish()
}

enum ValueRef<'a> {
    Number(f64),
    Flag(bool),
    Text(&'a str),
}

impl StoreReading for pb::Reading {
    fn point(&self) -> &str {
        &self.point
    }

    fn ts_ms(&self) -> i64 {
        self.ts_ms
    }

    fn good_number(&self) -> Option<f64> {
        let good = self
            .quality
            .is_some_and(|q| q.kind == pb::QualityKind::Good as i32);
        match self.value {
            Some(pb::reading::Value::Number(v)) if good && v.is_finite() => Some(v),
            _ => None,
        }
    }

    fn value_hash(&self) -> u64 {
        let value = self.value.as_ref().map(|v| match v {
            pb::reading::Value::Number(n) => ValueRef::Number(*n),
            pb::reading::Value::Flag(b) => ValueRef::Flag(*b),
            pb::reading::Value::Text(t) => ValueRef::Text(t),
        });
        hash_parts(self.quality.as_ref(), value)
    }

    fn encode_to(&self, buf: &mut Vec<u8>) {
        self.encode_raw(buf);
    }
}

impl StoreReading for Reading {
    fn point(&self) -> &str {
        &self.point
    }

    fn ts_ms(&self) -> i64 {
        self.ts_ms
    }

    fn good_number(&self) -> Option<f64> {
        match self.value {
            Some(Value::Number(v)) if self.quality == Quality::Good && v.is_finite() => Some(v),
            _ => None,
        }
    }

    fn value_hash(&self) -> u64 {
        let value = self.value.as_ref().map(|v| match v {
            Value::Number(n) => ValueRef::Number(*n),
            Value::Bool(b) => ValueRef::Flag(*b),
            Value::Text(t) => ValueRef::Text(t),
        });
        hash_parts(Some(&self.quality.to_pb()), value)
    }

    fn encode_to(&self, buf: &mut Vec<u8>) {
        self.encode_pb(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_hash_sample_and_encode_alike() {
        let cases = [
            Reading::good("m/p", 5, Value::Number(2.5), "kW"),
            Reading::good("m/p", 5, Value::Number(f64::INFINITY), "kW"),
            Reading::good("m/p", 5, Value::Bool(true), ""),
            Reading::good("m/p", 5, Value::Text("x".into()), ""),
            Reading::bad("m/p", 5, Quality::Timeout, "kW", "no reply".into()),
            Reading::bad("m/p", 5, Quality::Exception(2), "kW", "illegal".into()),
        ];
        let mut hashes = std::collections::HashSet::new();
        for r in &cases {
            let p = r.to_pb();
            assert_eq!(r.value_hash(), p.value_hash(), "{r:?}");
            assert_eq!(r.good_number(), p.good_number(), "{r:?}");
            let (mut a, mut b) = (Vec::new(), Vec::new());
            r.encode_to(&mut a);
            p.encode_to(&mut b);
            assert_eq!(a, b, "{r:?}");
            hashes.insert(r.value_hash());
        }
        // What a reading says tells the hashes apart.
        assert_eq!(hashes.len(), cases.len());
    }
}
