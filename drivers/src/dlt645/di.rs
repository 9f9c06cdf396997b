//! DL/T 645-2007 data identifiers (DI3 DI2 DI1 DI0) and the formats of their values.
//!
//! Values are BCD, lowest byte first on the wire. Where a value can be negative, the top bit
//! of its most significant byte is the sign. Identifiers that are not in this table can still
//! be read: their data comes back as raw bytes.

use std::fmt;

use thiserror::Error;

/// A data identifier, printed and parsed as 8 hex digits `DI3DI2DI1DI0` (e.g. `00010000`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DataId(pub u32);

/// A data identifier that is not 8 hex digits.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("data identifier {0:?} must be 8 hex digits DI3DI2DI1DI0, for example 00010000")]
pub struct DataIdError(pub String);

impl DataId {
    /// Parses `00010000` or `00 01 00 00`.
    pub fn parse(text: &str) -> Result<Self, DataIdError> {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        if compact.len() != 8 {
            return Err(DataIdError(text.to_string()));
        }
        u32::from_str_radix(&compact, 16)
            .map(DataId)
            .map_err(|_| DataIdError(text.to_string()))
    }

    /// The four bytes in wire order (DI0 first).
    pub fn to_wire(self) -> [u8; 4] {
        self.0.to_le_bytes()
    }

    /// Reads a DI from the first four data bytes (DI0 first).
    pub fn from_wire(bytes: &[u8]) -> Option<Self> {
        let b: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
        Some(DataId(u32::from_le_bytes(b)))
    }

    fn bytes(self) -> [u8; 4] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for DataId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}", self.0)
    }
}

impl fmt::Debug for DataId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataId({self})")
    }
}

impl std::str::FromStr for DataId {
    type Err = DataIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DataId::parse(s)
    }
}

/// How a value is laid out in the data field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `bytes` BCD bytes with `decimals` digits after the point; `signed` uses the top bit.
    Bcd {
        /// Length in bytes.
        bytes: u8,
        /// Digits after the decimal point.
        decimals: u8,
        /// The top bit of the last byte is a sign bit.
        signed: bool,
    },
    /// `YYMMDDWW`: date and day of week.
    DateWeek,
    /// `hhmmss`.
    Time,
    /// A bit field of `bytes` bytes, binary, lowest byte first (status words).
    Word {
        /// Length in bytes.
        bytes: u8,
    },
    /// Twelve BCD digits (a meter address).
    Digits12,
}

impl Format {
    /// Length of the value in the data field.
    pub fn len(self) -> usize {
        match self {
            Format::Bcd { bytes, .. } | Format::Word { bytes } => bytes as usize,
            Format::DateWeek => 4,
            Format::Time => 3,
            Format::Digits12 => 6,
        }
    }

    /// Always false: every format has at least one byte.
    pub fn is_empty(self) -> bool {
        false
    }
}

/// What the table knows about an identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataIdInfo {
    /// The identifier.
    pub di: DataId,
    /// What it measures, in English.
    pub name: String,
    /// Engineering unit ("kWh", "V", ...), empty when none.
    pub unit: &'static str,
    /// Layout of the value.
    pub format: Format,
}

/// A decoded value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A number in engineering units: `mantissa / 10^decimals`.
    Decimal {
        /// The digits as an integer, with sign.
        mantissa: i64,
        /// Digits after the decimal point.
        decimals: u8,
    },
    /// A date, time or address in its usual text form.
    Text(String),
    /// A status word.
    Word(u32),
    /// Bytes of an identifier this table does not know (DI0 first order removed: as sent).
    Raw(Vec<u8>),
}

impl Value {
    /// The value as a float in engineering units, where it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Decimal { mantissa, decimals } => {
                Some(*mantissa as f64 / 10f64.powi(i32::from(*decimals)))
            }
            Value::Word(w) => Some(f64::from(*w)),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Decimal { mantissa, decimals } => {
                let d = u32::from(*decimals);
                if d == 0 {
                    return write!(f, "{mantissa}");
                }
                let p = 10i64.pow(d);
                let sign = if *mantissa < 0 { "-" } else { "" };
                let m = mantissa.unsigned_abs();
                write!(
                    f,
                    "{sign}{}.{:0width$}",
                    m / p as u64,
                    m % p as u64,
                    width = d as usize
                )
            }
            Value::Text(t) => f.write_str(t),
            Value::Word(w) => write!(f, "0x{w:04X}"),
            Value::Raw(bytes) => {
                for b in bytes {
                    write!(f, "{b:02X}")?;
                }
                Ok(())
            }
        }
    }
}

/// Why a value could not be decoded.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ValueError {
    /// The meter sent fewer bytes than the format needs.
    #[error("{di}: expected {expected} data bytes, got {got}")]
    Short {
        /// Identifier.
        di: DataId,
        /// Bytes the format needs.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// A nibble above 9 in a BCD field.
    #[error("{di}: byte {byte:02X} is not BCD")]
    NotBcd {
        /// Identifier.
        di: DataId,
        /// The offending byte.
        byte: u8,
    },
}

const PHASES: [&str; 4] = ["total", "phase A", "phase B", "phase C"];

fn energy_kind(di2: u8) -> Option<(&'static str, &'static str, bool)> {
    Some(match di2 {
        0x00 => ("combined active energy", "kWh", true),
        0x01 => ("forward active energy", "kWh", false),
        0x02 => ("reverse active energy", "kWh", false),
        0x03 => ("combined reactive energy 1", "kvarh", true),
        0x04 => ("combined reactive energy 2", "kvarh", true),
        0x05 => ("quadrant I reactive energy", "kvarh", false),
        0x06 => ("quadrant II reactive energy", "kvarh", false),
        0x07 => ("quadrant III reactive energy", "kvarh", false),
        0x08 => ("quadrant IV reactive energy", "kvarh", false),
        0x09 => ("forward apparent energy", "kVAh", false),
        0x0A => ("reverse apparent energy", "kVAh", false),
        _ => return None,
    })
}

/// Looks up an identifier in the table. `None` means: read it as raw bytes.
pub fn lookup(di: DataId) -> Option<DataIdInfo> {
    let [d3, d2, d1, d0] = di.bytes();
    let info = |name: String, unit, format| {
        Some(DataIdInfo {
            di,
            name,
            unit,
            format,
        })
    };
    let bcd = |bytes, decimals, signed| Format::Bcd {
        bytes,
        decimals,
        signed,
    };
    match (d3, d2, d1, d0) {
        // Energy: DI2 = kind, DI1 = 00 total or tariff 1..63, DI0 = 00 current or
        // settlement day 1..12.
        (0x00, kind, tariff @ 0x00..=0x3F, day @ 0x00..=0x0C) => {
            let (name, unit, signed) = energy_kind(kind)?;
            let mut text = name.to_string();
            if tariff == 0 {
                text.push_str(", total");
            } else {
                text.push_str(&format!(", tariff {tariff}"));
            }
            if day > 0 {
                text.push_str(&format!(", settlement day {day}"));
            }
            info(text, unit, bcd(4, 2, signed))
        }
        (0x02, 0x01, p @ 0x01..=0x03, 0x00) => info(
            format!("voltage, {}", PHASES[p as usize]),
            "V",
            bcd(2, 1, false),
        ),
        (0x02, 0x02, p @ 0x01..=0x03, 0x00) => info(
            format!("current, {}", PHASES[p as usize]),
            "A",
            bcd(3, 3, true),
        ),
        (0x02, 0x03, p @ 0x00..=0x03, 0x00) => info(
            format!("active power, {}", PHASES[p as usize]),
            "kW",
            bcd(3, 4, true),
        ),
        (0x02, 0x04, p @ 0x00..=0x03, 0x00) => info(
            format!("reactive power, {}", PHASES[p as usize]),
            "kvar",
            bcd(3, 4, true),
        ),
        (0x02, 0x05, p @ 0x00..=0x03, 0x00) => info(
            format!("apparent power, {}", PHASES[p as usize]),
            "kVA",
            bcd(3, 4, true),
        ),
        (0x02, 0x06, p @ 0x00..=0x03, 0x00) => info(
            format!("power factor, {}", PHASES[p as usize]),
            "",
            bcd(2, 3, true),
        ),
        (0x02, 0x07, p @ 0x01..=0x03, 0x00) => info(
            format!("phase angle, {}", PHASES[p as usize]),
            "°",
            bcd(2, 1, false),
        ),
        (0x02, 0x80, 0x00, 0x01) => info("neutral current".into(), "A", bcd(3, 3, true)),
        (0x02, 0x80, 0x00, 0x02) => info("grid frequency".into(), "Hz", bcd(2, 2, false)),
        (0x02, 0x80, 0x00, 0x03) => info(
            "one-minute average active power".into(),
            "kW",
            bcd(3, 4, true),
        ),
        (0x02, 0x80, 0x00, 0x04) => info("active demand".into(), "kW", bcd(3, 4, true)),
        (0x02, 0x80, 0x00, 0x07) => info("meter temperature".into(), "°C", bcd(2, 1, true)),
        (0x04, 0x00, 0x01, 0x01) => info("date and day of week".into(), "", Format::DateWeek),
        (0x04, 0x00, 0x01, 0x02) => info("time".into(), "", Format::Time),
        (0x04, 0x00, 0x04, 0x01) => info("communication address".into(), "", Format::Digits12),
        (0x04, 0x00, 0x05, w @ 0x01..=0x07) => info(
            format!("meter status word {w}"),
            "",
            Format::Word { bytes: 2 },
        ),
        _ => None,
    }
}

fn bcd_byte(di: DataId, byte: u8) -> Result<u8, ValueError> {
    let (hi, lo) = (byte >> 4, byte & 0x0F);
    if hi > 9 || lo > 9 {
        return Err(ValueError::NotBcd { di, byte });
    }
    Ok(hi * 10 + lo)
}

/// Decodes the value bytes of `di` (the data after the four DI bytes).
///
/// Extra bytes beyond the format's length are ignored (some meters append data); too few
/// bytes, or a non-BCD nibble, is an error.
pub fn decode_value(di: DataId, data: &[u8]) -> Result<Value, ValueError> {
    let Some(info) = lookup(di) else {
        return Ok(Value::Raw(data.to_vec()));
    };
    let need = info.format.len();
    if data.len() < need {
        return Err(ValueError::Short {
            di,
            expected: need,
            got: data.len(),
        });
    }
    let data = &data[..need];
    match info.format {
        Format::Bcd {
            decimals, signed, ..
        } => {
            let mut mantissa: i64 = 0;
            let mut negative = false;
            for (i, byte) in data.iter().enumerate().rev() {
                let mut b = *byte;
                if signed && i == need - 1 {
                    negative = b & 0x80 != 0;
                    b &= 0x7F;
                }
                mantissa = mantissa * 100 + i64::from(bcd_byte(di, b)?);
            }
            if negative {
                mantissa = -mantissa;
            }
            Ok(Value::Decimal { mantissa, decimals })
        }
        Format::DateWeek => {
            let [ww, dd, mm, yy] = [
                bcd_byte(di, data[0])?,
                bcd_byte(di, data[1])?,
                bcd_byte(di, data[2])?,
                bcd_byte(di, data[3])?,
            ];
            Ok(Value::Text(format!(
                "20{yy:02}-{mm:02}-{dd:02} (weekday {ww})"
            )))
        }
        Format::Time => {
            let [ss, mi, hh] = [
                bcd_byte(di, data[0])?,
                bcd_byte(di, data[1])?,
                bcd_byte(di, data[2])?,
            ];
            Ok(Value::Text(format!("{hh:02}:{mi:02}:{ss:02}")))
        }
        Format::Word { .. } => Ok(Value::Word(
            data.iter()
                .rev()
                .fold(0u32, |acc, b| (acc << 8) | u32::from(*b)),
        )),
        Format::Digits12 => {
            let mut text = String::with_capacity(12);
            for b in data.iter().rev() {
                bcd_byte(di, *b)?;
                text.push_str(&format!("{b:02X}"));
            }
            Ok(Value::Text(text))
        }
    }
}

/// Encodes a number into the BCD layout of `format` (used by the simulators and tests).
/// Values that do not fit are clamped to the largest the field can hold.
pub fn encode_decimal(format: Format, value: f64) -> Vec<u8> {
    let Format::Bcd {
        bytes,
        decimals,
        signed,
    } = format
    else {
        return vec![0; format.len()];
    };
    let digits = u32::from(bytes) * 2;
    let max = if signed {
        // The sign bit takes the top bit of the top digit: at most 7 there.
        8 * 10u64.pow(digits - 1) - 1
    } else {
        10u64.pow(digits) - 1
    };
    let scaled = (value.abs() * 10f64.powi(i32::from(decimals))).round();
    let mut m = if scaled >= max as f64 {
        max
    } else {
        scaled as u64
    };
    let mut out = Vec::with_capacity(bytes as usize);
    for _ in 0..bytes {
        let two = (m % 100) as u8;
        out.push(((two / 10) << 4) | (two % 10));
        m /= 100;
    }
    if signed && value < 0.0 {
        if let Some(last) = out.last_mut() {
            *last |= 0x80;
        }
    }
    out
}

/// Encodes two decimal digits per byte, lowest pair first (dates, times, addresses).
pub fn encode_bcd_pairs(pairs_high_first: &[u8]) -> Vec<u8> {
    pairs_high_first
        .iter()
        .rev()
        .map(|v| ((v / 10) << 4) | (v % 10))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn di(s: &str) -> DataId {
        DataId::parse(s).unwrap()
    }

    #[test]
    fn energy_total_and_tariffs() {
        let info = lookup(di("00010000")).unwrap();
        assert_eq!(info.unit, "kWh");
        assert_eq!(info.name, "forward active energy, total");
        assert_eq!(
            lookup(di("00020400")).unwrap().name,
            "reverse active energy, tariff 4"
        );
        // 12345.67 kWh, lowest byte first.
        let v = decode_value(di("00010000"), &[0x67, 0x45, 0x23, 0x01]).unwrap();
        assert_eq!(v.to_string(), "12345.67");
        assert_eq!(v.as_f64(), Some(12345.67));
        // Combined active energy is signed: top bit of the top byte.
        let v = decode_value(di("00000000"), &[0x00, 0x50, 0x00, 0x80]).unwrap();
        assert_eq!(v.to_string(), "-50.00");
    }

    #[test]
    fn instantaneous_values() {
        // 220.1 V
        let v = decode_value(di("02010100"), &[0x01, 0x22]).unwrap();
        assert_eq!(v.to_string(), "220.1");
        // -1.234 A
        let v = decode_value(di("02020100"), &[0x34, 0x12, 0x80]).unwrap();
        assert_eq!(v.to_string(), "-1.234");
        // 3.5 kW total active power = 03.5000
        let v = decode_value(di("02030000"), &[0x00, 0x50, 0x03]).unwrap();
        assert_eq!(v.as_f64(), Some(3.5));
        // 0.987 power factor
        let v = decode_value(di("02060000"), &[0x87, 0x09]).unwrap();
        assert_eq!(v.to_string(), "0.987");
        // 50.01 Hz
        let v = decode_value(di("02800002"), &[0x01, 0x50]).unwrap();
        assert_eq!(v.to_string(), "50.01");
    }

    #[test]
    fn date_time_status_and_raw() {
        let v = decode_value(di("04000101"), &[0x02, 0x24, 0x11, 0x26]).unwrap();
        assert_eq!(v.to_string(), "2026-11-24 (weekday 2)");
        let v = decode_value(di("04000102"), &[0x05, 0x04, 0x13]).unwrap();
        assert_eq!(v.to_string(), "13:04:05");
        let v = decode_value(di("04000503"), &[0x10, 0x00]).unwrap();
        assert_eq!(v, Value::Word(0x0010));
        let v = decode_value(di("EEEE0001"), &[1, 2, 3]).unwrap();
        assert_eq!(v, Value::Raw(vec![1, 2, 3]));
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(matches!(
            decode_value(di("00010000"), &[0x67, 0x45]),
            Err(ValueError::Short { .. })
        ));
        assert!(matches!(
            decode_value(di("00010000"), &[0x6A, 0x45, 0, 0]),
            Err(ValueError::NotBcd { byte: 0x6A, .. })
        ));
    }

    #[test]
    fn encode_decimal_round_trips() {
        let f = lookup(di("02030000")).unwrap().format;
        let bytes = encode_decimal(f, -12.3456);
        assert_eq!(
            decode_value(di("02030000"), &bytes).unwrap().to_string(),
            "-12.3456"
        );
        let f = lookup(di("00010000")).unwrap().format;
        assert_eq!(encode_decimal(f, 12345.67), vec![0x67, 0x45, 0x23, 0x01]);
    }

    #[test]
    fn data_id_parsing() {
        assert_eq!(di("00 01 00 00"), DataId(0x0001_0000));
        assert_eq!(DataId(0x0001_0000).to_wire(), [0, 0, 1, 0]);
        assert!(DataId::parse("0001000").is_err());
        assert!(DataId::parse("0001000G").is_err());
    }
}
