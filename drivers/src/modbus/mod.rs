//! Modbus: data types, the read planner, a client with timeouts, and a simulator.
//!
//! Framing and transport are tokio-modbus's (TCP, RTU over serial, RTU over TCP); this module
//! adds what a gateway needs around it: typed values with byte and word order, scale and
//! offset; merging points into few reads; a timeout on every call; simulated devices.

pub mod client;
pub mod planner;
#[cfg(feature = "sim")]
pub mod sim;

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

pub use client::{ModbusError, ModbusLine, ReadData};
pub use planner::{ReadPlan, plan};

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// 0x: read/write bits (function 01 / 05 / 15).
    Coil,
    /// 1x: read-only bits (function 02).
    DiscreteInput,
    /// 3x: read-only registers (function 04).
    InputRegister,
    /// 4x: read/write registers (function 03 / 06 / 16).
    HoldingRegister,
}

impl Table {
    /// True for coils and discrete inputs.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::DiscreteInput)
    }

    /// Largest quantity one read may ask for: 2000 bits or 125 registers.
    pub fn max_read(self) -> u16 {
        if self.is_bits() { 2000 } else { 125 }
    }

    /// Name as written in configs.
    pub fn name(self) -> &'static str {
        match self {
            Table::Coil => "coil",
            Table::DiscreteInput => "discrete",
            Table::InputRegister => "input",
            Table::HoldingRegister => "holding",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A value that is not one of the names a config may use.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{what} {got:?} is not one of: {allowed}")]
pub struct NameError {
    what: &'static str,
    got: String,
    allowed: &'static str,
}

impl FromStr for Table {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "coil" | "coils" => Table::Coil,
            "discrete" | "discrete_input" | "discrete-input" => Table::DiscreteInput,
            "input" | "input_register" | "input-register" => Table::InputRegister,
            "holding" | "holding_register" | "holding-register" => Table::HoldingRegister,
            _ => {
                return Err(NameError {
                    what: "table",
                    got: s.into(),
                    allowed: "coil, discrete, input, holding",
                });
            }
        })
    }
}

/// How a point's bits are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// One bit (coil, discrete input), or a register that is non-zero.
    Bool,
    /// Unsigned 16-bit.
    U16,
    /// Signed 16-bit.
    I16,
    /// Unsigned 32-bit, two registers.
    U32,
    /// Signed 32-bit, two registers.
    I32,
    /// Unsigned 64-bit, four registers.
    U64,
    /// Signed 64-bit, four registers.
    I64,
    /// IEEE 754 single, two registers.
    F32,
    /// IEEE 754 double, four registers.
    F64,
}

impl DataType {
    /// Registers (or bits, for [`DataType::Bool`] on a bit table) the type takes.
    pub fn registers(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
        }
    }

    /// The smallest and largest raw value a write can put in the type unchanged (a bool
    /// takes 0 and 1; `encode_registers` clamps anything outside).
    pub fn raw_range(self) -> (f64, f64) {
        match self {
            DataType::Bool => (0.0, 1.0),
            DataType::U16 => (0.0, f64::from(u16::MAX)),
            DataType::I16 => (f64::from(i16::MIN), f64::from(i16::MAX)),
            DataType::U32 => (0.0, f64::from(u32::MAX)),
            DataType::I32 => (f64::from(i32::MIN), f64::from(i32::MAX)),
            // Past 2^53 an f64 no longer holds every integer; no setpoint is that large.
            DataType::U64 => (0.0, 9_007_199_254_740_992.0),
            DataType::I64 => (-9_007_199_254_740_992.0, 9_007_199_254_740_992.0),
            DataType::F32 => (f64::from(f32::MIN), f64::from(f32::MAX)),
            DataType::F64 => (f64::MIN, f64::MAX),
        }
    }

    /// Name as written in configs.
    pub fn name(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::U64 => "u64",
            DataType::I64 => "i64",
            DataType::F32 => "f32",
            DataType::F64 => "f64",
        }
    }
}

impl FromStr for DataType {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "bool" => DataType::Bool,
            "u16" => DataType::U16,
            "i16" => DataType::I16,
            "u32" => DataType::U32,
            "i32" => DataType::I32,
            "u64" => DataType::U64,
            "i64" => DataType::I64,
            "f32" => DataType::F32,
            "f64" => DataType::F64,
            _ => {
                return Err(NameError {
                    what: "type",
                    got: s.into(),
                    allowed: "bool, u16, i16, u32, i32, u64, i64, f32, f64",
                });
            }
        })
    }
}

/// Order of bytes within a register, or of registers within a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Order {
    /// Most significant first (Modbus's own order).
    #[default]
    Big,
    /// Least significant first ("swapped").
    Little,
}

impl FromStr for Order {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "big" | "msb" | "ab" => Order::Big,
            "little" | "lsb" | "ba" | "swapped" => Order::Little,
            _ => {
                return Err(NameError {
                    what: "order",
                    got: s.into(),
                    allowed: "big, little",
                });
            }
        })
    }
}

/// Where a point lives and how to turn its registers into a number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PointSpec {
    /// Data table.
    pub table: Table,
    /// First address (0-based protocol address).
    pub address: u16,
    /// Type.
    pub data_type: DataType,
    /// Byte order within each register.
    pub byte_order: Order,
    /// Register order within a multi-register value.
    pub word_order: Order,
    /// Engineering value = raw * scale + offset.
    pub scale: f64,
    /// See `scale`.
    pub offset: f64,
}

impl PointSpec {
    /// A big-endian point with no scaling.
    pub fn new(table: Table, address: u16, data_type: DataType) -> Self {
        PointSpec {
            table,
            address,
            data_type,
            byte_order: Order::Big,
            word_order: Order::Big,
            scale: 1.0,
            offset: 0.0,
        }
    }

    /// Registers or bits it spans.
    pub fn len(&self) -> u16 {
        if self.table.is_bits() {
            1
        } else {
            self.data_type.registers()
        }
    }

    /// Always false: a point spans at least one register or bit.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// One past its last address, as u32 so that 65535 + 1 does not wrap.
    pub fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.len())
    }

    /// The engineering values a write can put in the point (`raw * scale + offset` over
    /// the type's raw range), lowest first; a bit takes 0 and 1.
    pub fn writable_range(&self) -> (f64, f64) {
        if self.table.is_bits() {
            return (0.0, 1.0);
        }
        let (lo, hi) = self.data_type.raw_range();
        let (a, b) = (lo * self.scale + self.offset, hi * self.scale + self.offset);
        (a.min(b), a.max(b))
    }

    /// Decodes the point from `data`, the result of a read that began at `start`.
    pub fn decode(&self, start: u16, data: &ReadData) -> Result<f64, DecodeError> {
        let off = usize::from(self.address.wrapping_sub(start));
        match data {
            ReadData::Bits(bits) => bits
                .get(off)
                .map(|b| if *b { 1.0 } else { 0.0 })
                .ok_or(DecodeError::Short),
            ReadData::Words(words) => {
                let regs = words
                    .get(off..off + usize::from(self.data_type.registers()))
                    .ok_or(DecodeError::Short)?;
                let raw = decode_registers(regs, self.data_type, self.byte_order, self.word_order);
                let mut v = raw * self.scale + self.offset;
                if !matches!(self.data_type, DataType::F32 | DataType::F64)
                    && (self.scale != 1.0 || self.offset != 0.0)
                {
                    // An integer register scaled by 0.001 holds thousandths: the value has
                    // three decimals, not the binary float's tail (120000.72600000001).
                    let p = 10f64.powi(decimals(self.scale).max(decimals(self.offset)));
                    v = (v * p).round() / p;
                }
                if v.is_finite() {
                    Ok(v)
                } else {
                    Err(DecodeError::NotFinite)
                }
            }
        }
    }
}

/// Decimal places of `x` as a person writes it (0.001 → 3, 2.5 → 1, 10 → 0), at most 9.
fn decimals(x: f64) -> i32 {
    let mut p = 1.0;
    for d in 0..9 {
        let scaled = x * p;
        if (scaled - scaled.round()).abs() <= 1e-9 * scaled.abs().max(1.0) {
            return d;
        }
        p *= 10.0;
    }
    9
}

/// Why a point could not be decoded from a read.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The device returned fewer registers than asked for.
    #[error("reply shorter than the point")]
    Short,
    /// A float that is NaN or infinite.
    #[error("value is not a finite number")]
    NotFinite,
}

/// Registers to a raw number of `ty`, honouring byte and word order.
pub fn decode_registers(regs: &[u16], ty: DataType, byte_order: Order, word_order: Order) -> f64 {
    let mut bytes = [0u8; 8];
    let n = regs.len().min(4);
    for i in 0..n {
        let reg = match word_order {
            Order::Big => regs[i],
            Order::Little => regs[n - 1 - i],
        };
        let [hi, lo] = reg.to_be_bytes();
        let (a, b) = match byte_order {
            Order::Big => (hi, lo),
            Order::Little => (lo, hi),
        };
        bytes[2 * i] = a;
        bytes[2 * i + 1] = b;
    }
    let b2 = [bytes[0], bytes[1]];
    let b4 = [bytes[0], bytes[1], bytes[2], bytes[3]];
    match ty {
        DataType::Bool => f64::from(u8::from(u16::from_be_bytes(b2) != 0)),
        DataType::U16 => f64::from(u16::from_be_bytes(b2)),
        DataType::I16 => f64::from(i16::from_be_bytes(b2)),
        DataType::U32 => f64::from(u32::from_be_bytes(b4)),
        DataType::I32 => f64::from(i32::from_be_bytes(b4)),
        DataType::U64 => u64::from_be_bytes(bytes) as f64,
        DataType::I64 => i64::from_be_bytes(bytes) as f64,
        // Through the shortest decimal that round-trips the f32, so that 12.56f32 becomes
        // 12.56 and not 12.5600004196167.
        DataType::F32 => {
            let x = f32::from_be_bytes(b4);
            x.to_string().parse::<f64>().unwrap_or(f64::from(x))
        }
        DataType::F64 => f64::from_be_bytes(bytes),
    }
}

/// A raw number to registers of `ty` in the given orders (the inverse of
/// [`decode_registers`]; used by the simulator and by control writes).
pub fn encode_registers(
    value: f64,
    ty: DataType,
    byte_order: Order,
    word_order: Order,
) -> Vec<u16> {
    let bytes: Vec<u8> = match ty {
        DataType::Bool => vec![0, u8::from(value != 0.0)],
        DataType::U16 => (value.round().clamp(0.0, f64::from(u16::MAX)) as u16)
            .to_be_bytes()
            .to_vec(),
        DataType::I16 => (value
            .round()
            .clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16)
            .to_be_bytes()
            .to_vec(),
        DataType::U32 => (value.round().clamp(0.0, f64::from(u32::MAX)) as u32)
            .to_be_bytes()
            .to_vec(),
        DataType::I32 => (value
            .round()
            .clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32)
            .to_be_bytes()
            .to_vec(),
        DataType::U64 => (value.round().max(0.0) as u64).to_be_bytes().to_vec(),
        DataType::I64 => (value.round() as i64).to_be_bytes().to_vec(),
        DataType::F32 => (value as f32).to_be_bytes().to_vec(),
        DataType::F64 => value.to_be_bytes().to_vec(),
    };
    let mut regs: Vec<u16> = bytes
        .chunks(2)
        .map(|c| match byte_order {
            Order::Big => u16::from_be_bytes([c[0], c[1]]),
            Order::Little => u16::from_le_bytes([c[0], c[1]]),
        })
        .collect();
    if word_order == Order::Little {
        regs.reverse();
    }
    regs
}

/// A Modbus exception code's meaning, in English.
pub fn exception_text(code: u8) -> &'static str {
    match code {
        0x01 => "illegal function",
        0x02 => "illegal data address",
        0x03 => "illegal data value",
        0x04 => "server device failure",
        0x05 => "acknowledge",
        0x06 => "server device busy",
        0x08 => "memory parity error",
        0x0A => "gateway path unavailable",
        0x0B => "gateway target device failed to respond",
        _ => "vendor-specific exception",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_each_type_in_each_order() {
        // 0x4148F5C3 = 12.56 as f32
        let regs = [0x4148, 0xF5C3];
        let f = decode_registers(&regs, DataType::F32, Order::Big, Order::Big);
        assert_eq!(f, 12.56);
        let swapped = [0xF5C3, 0x4148];
        let f = decode_registers(&swapped, DataType::F32, Order::Big, Order::Little);
        assert!((f - 12.56).abs() < 1e-5);
        let bytes_swapped = [0x4841, 0xC3F5];
        let f = decode_registers(&bytes_swapped, DataType::F32, Order::Little, Order::Big);
        assert!((f - 12.56).abs() < 1e-5);
        assert_eq!(
            decode_registers(&[0xFFFF], DataType::I16, Order::Big, Order::Big),
            -1.0
        );
        assert_eq!(
            decode_registers(&[0xFFFF], DataType::U16, Order::Big, Order::Big),
            65535.0
        );
        assert_eq!(
            decode_registers(&[0x0001, 0x0000], DataType::U32, Order::Big, Order::Big),
            65536.0
        );
        assert_eq!(
            decode_registers(&[0xFFFF, 0xFFFE], DataType::I32, Order::Big, Order::Big),
            -2.0
        );
        assert_eq!(
            decode_registers(
                &[0, 0, 0x0001, 0x0000],
                DataType::U64,
                Order::Big,
                Order::Big
            ),
            65536.0
        );
        assert_eq!(
            decode_registers(
                &[0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF],
                DataType::I64,
                Order::Big,
                Order::Big
            ),
            -1.0
        );
    }

    #[test]
    fn a_scaled_integer_has_the_scales_decimals_and_no_float_tail() {
        let mut p = PointSpec::new(Table::HoldingRegister, 4, DataType::U32);
        p.scale = 0.001;
        let words = vec![(120_000_726u32 >> 16) as u16, 120_000_726u32 as u16];
        let v = p.decode(4, &ReadData::Words(words)).unwrap();
        assert_eq!(v.to_string(), "120000.726");
        assert_eq!(decimals(0.001), 3);
        assert_eq!(decimals(0.1), 1);
        assert_eq!(decimals(2.5), 1);
        assert_eq!(decimals(10.0), 0);
        assert_eq!(decimals(-40.0), 0);
    }

    #[test]
    fn scale_and_offset_apply() {
        let mut p = PointSpec::new(Table::HoldingRegister, 10, DataType::I16);
        p.scale = 0.1;
        p.offset = -40.0;
        let v = p.decode(8, &ReadData::Words(vec![0, 0, 655])).unwrap();
        assert!((v - 25.5).abs() < 1e-9);
        assert_eq!(
            p.decode(8, &ReadData::Words(vec![0, 0])),
            Err(DecodeError::Short)
        );
    }

    fn any_type() -> impl Strategy<Value = DataType> {
        prop_oneof![
            Just(DataType::U16),
            Just(DataType::I16),
            Just(DataType::U32),
            Just(DataType::I32),
            Just(DataType::F32),
            Just(DataType::F64),
            Just(DataType::I64),
        ]
    }

    proptest! {
        #[test]
        fn a_value_inside_the_writable_range_survives_the_write(
            ty in any_type(),
            frac in 0.0f64..=1.0,
            scale in prop_oneof![Just(1.0), Just(0.1), Just(-0.5)],
        ) {
            let mut spec = PointSpec::new(Table::HoldingRegister, 0, ty);
            spec.scale = scale;
            let (lo, hi) = spec.writable_range();
            // Stay within 32 bits' worth so the f64 arithmetic below is exact enough.
            let (lo, hi) = (lo.max(-1e9), hi.min(1e9));
            let v = lo + (hi - lo) * frac;
            let raw = (v - spec.offset) / spec.scale;
            let regs = encode_registers(raw, ty, Order::Big, Order::Big);
            let back = decode_registers(&regs, ty, Order::Big, Order::Big) * spec.scale + spec.offset;
            let step = if matches!(ty, DataType::F32) { v.abs() * 1e-6 + 1e-6 } else { scale.abs() / 2.0 + 1e-6 };
            let step = if ty == DataType::Bool { 1.0 } else { step };
            prop_assert!((back - v).abs() <= step, "{ty:?} {v} came back as {back}");
        }

        #[test]
        fn encode_then_decode_is_identity(
            ty in any_type(),
            raw in -30000i32..30000,
            bo in prop_oneof![Just(Order::Big), Just(Order::Little)],
            wo in prop_oneof![Just(Order::Big), Just(Order::Little)],
        ) {
            let v = if matches!(ty, DataType::U16 | DataType::U32) { f64::from(raw.abs()) } else { f64::from(raw) };
            let regs = encode_registers(v, ty, bo, wo);
            prop_assert_eq!(regs.len(), usize::from(ty.registers()));
            prop_assert_eq!(decode_registers(&regs, ty, bo, wo), v);
        }
    }
}
