//! DL/T 645-2007 frame codec: pure code, no I/O.
//!
//! On the wire a frame is
//! `[FE..] 68 A0 A1 A2 A3 A4 A5 68 C L DATA CS 16`, where the address is six BCD bytes with
//! the lowest two digits first, every DATA byte is sent plus 0x33, and CS is the sum modulo 256
//! of every byte from the first 0x68 to the last DATA byte. [`Frame`] holds the data *without*
//! the 0x33 offset; [`encode`] and [`decode`] add and remove it.

use std::fmt;

use thiserror::Error;

/// Start and second start byte of a frame.
pub const START: u8 = 0x68;
/// Final byte of a frame.
pub const END: u8 = 0x16;
/// Wake-up byte sent before a frame so that the receiver's UART settles.
pub const WAKEUP: u8 = 0xFE;
/// Offset added to every data byte on the wire.
pub const DATA_OFFSET: u8 = 0x33;
/// Bytes of a frame besides its data: 68, six address bytes, 68, C, L, CS, 16.
pub const OVERHEAD: usize = 12;
/// Largest data field we accept. The standard caps a read reply at 200 bytes (L <= 200) and
/// a write at 50; anything longer is garbage or a line collision.
pub const MAX_DATA_LEN: usize = 200;

/// Control code function bits (D4..D0).
pub mod func {
    /// Broadcast time synchronisation.
    pub const BROADCAST_TIME: u8 = 0x08;
    /// Read data.
    pub const READ_DATA: u8 = 0x11;
    /// Read follow-up data.
    pub const READ_FOLLOWUP: u8 = 0x12;
    /// Read communication address.
    pub const READ_ADDRESS: u8 = 0x13;
    /// Write data.
    pub const WRITE_DATA: u8 = 0x14;
    /// Remote control: trip, close, alarm.
    pub const REMOTE_CONTROL: u8 = 0x1C;
}

/// Control byte: D7 direction (1 = reply from the meter), D6 abnormal reply, D5 follow-up
/// frames exist, D4..D0 function code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Control(pub u8);

impl Control {
    /// A master-to-meter request with this function code.
    pub fn request(function: u8) -> Self {
        Control(function & 0x1F)
    }
    /// A normal reply to `function`, with the follow-up flag as given.
    pub fn reply(function: u8, more_follows: bool) -> Self {
        Control(0x80 | (function & 0x1F) | if more_follows { 0x20 } else { 0 })
    }
    /// An abnormal (error) reply to `function`.
    pub fn abnormal(function: u8) -> Self {
        Control(0xC0 | (function & 0x1F))
    }
    /// True when the frame comes from a meter.
    pub fn is_reply(self) -> bool {
        self.0 & 0x80 != 0
    }
    /// True for an abnormal reply (the data is an error word).
    pub fn is_abnormal(self) -> bool {
        self.0 & 0x40 != 0
    }
    /// True when the meter has follow-up frames to send.
    pub fn more_follows(self) -> bool {
        self.0 & 0x20 != 0
    }
    /// The function code, D4..D0.
    pub fn function(self) -> u8 {
        self.0 & 0x1F
    }
}

/// A meter's communication address: 12 decimal digits, or `AA` wildcard bytes.
///
/// Stored in wire order: `bytes[0]` holds the lowest two digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(pub [u8; 6]);

/// An address that is not 12 decimal digits.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("meter address {0:?} must be 12 decimal digits (for example 000000000001)")]
pub struct AddressError(pub String);

impl Address {
    /// All meters answer: used for read-address (13) when one meter is on the line.
    pub const WILDCARD: Address = Address([0xAA; 6]);
    /// Broadcast address for time synchronisation (08); meters do not reply.
    pub const BROADCAST: Address = Address([0x99; 6]);

    /// Parses 12 decimal digits, most significant first, as printed on the nameplate.
    /// The digit pair `AA` is accepted as a wildcard byte.
    pub fn parse(text: &str) -> Result<Self, AddressError> {
        let t = text.trim();
        if t.len() != 12 || !t.is_ascii() {
            return Err(AddressError(text.to_string()));
        }
        let mut out = [0u8; 6];
        for (i, pair) in t.as_bytes().chunks(2).enumerate() {
            let byte = if pair.eq_ignore_ascii_case(b"AA") {
                0xAA
            } else {
                let hi = (pair[0] as char).to_digit(10);
                let lo = (pair[1] as char).to_digit(10);
                match (hi, lo) {
                    (Some(h), Some(l)) => ((h << 4) | l) as u8,
                    _ => return Err(AddressError(text.to_string())),
                }
            };
            out[5 - i] = byte;
        }
        Ok(Address(out))
    }

    /// True when this (possibly wildcarded) address selects `meter`.
    ///
    /// A wildcard byte (`AA`) matches any byte; the broadcast address matches every meter.
    pub fn matches(&self, meter: &Address) -> bool {
        if *self == Self::BROADCAST {
            return true;
        }
        self.0
            .iter()
            .zip(meter.0.iter())
            .all(|(want, have)| *want == 0xAA || want == have)
    }

    /// True when the address contains a wildcard byte.
    pub fn has_wildcard(&self) -> bool {
        self.0.contains(&0xAA)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.iter().rev() {
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({self})")
    }
}

impl std::str::FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Address::parse(s)
    }
}

/// One DL/T 645 frame, data without the 0x33 wire offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Meter address (or wildcard / broadcast).
    pub address: Address,
    /// Control byte.
    pub control: Control,
    /// Data field, as the application sees it (offset removed).
    pub data: Vec<u8>,
}

/// Why a frame cannot be encoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EncodeError {
    /// Data field longer than [`MAX_DATA_LEN`].
    #[error("data field of {0} bytes is longer than the {MAX_DATA_LEN} bytes DL/T 645 allows")]
    TooLong(usize),
}

/// Why bytes on the line were skipped while looking for a frame.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum FrameError {
    /// Bytes before a frame start that are neither wake-up bytes nor a start byte.
    #[error("{0} byte(s) of garbage before a frame")]
    Garbage(usize),
    /// A 0x68 whose second start byte is missing: not a frame start.
    #[error("start byte without a second start byte")]
    BadHeader,
    /// The length byte is larger than any valid frame.
    #[error("length byte {0} is larger than the {MAX_DATA_LEN} bytes DL/T 645 allows")]
    Oversized(u8),
    /// The checksum does not match.
    #[error("checksum mismatch: frame says {expected:02X}, bytes sum to {computed:02X}")]
    Checksum {
        /// Checksum byte carried by the frame.
        expected: u8,
        /// Checksum computed over the received bytes.
        computed: u8,
    },
    /// The byte where 0x16 belongs is something else.
    #[error("end byte is {0:02X}, not 16")]
    BadEnd(u8),
    /// A frame start whose frame never completed: a whole frame follows it.
    #[error("frame cut short by the next frame")]
    Truncated,
}

/// Result of one [`decode`] step over a receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole, valid frame; drop `consumed` bytes from the buffer.
    Frame {
        /// The decoded frame.
        frame: Frame,
        /// Bytes used, including wake-up bytes and garbage before it.
        consumed: usize,
    },
    /// The buffer holds the beginning of what may be a frame (or nothing): read more bytes.
    NeedMore,
    /// Drop `consumed` bytes and decode again; `error` says why.
    Skip {
        /// Bytes to drop.
        consumed: usize,
        /// What was wrong with them.
        error: FrameError,
    },
}

/// Modulo-256 sum, the DL/T 645 checksum.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

/// Length on the wire of a frame with `data_len` data bytes and `wakeup` leading FE bytes.
pub fn wire_len(data_len: usize, wakeup: usize) -> usize {
    wakeup + OVERHEAD + data_len
}

/// Appends the wire form of `frame`, preceded by `wakeup` FE bytes, to `out`.
pub fn encode_into(frame: &Frame, wakeup: usize, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if frame.data.len() > MAX_DATA_LEN {
        return Err(EncodeError::TooLong(frame.data.len()));
    }
    out.reserve(wire_len(frame.data.len(), wakeup));
    out.extend(std::iter::repeat_n(WAKEUP, wakeup));
    let start = out.len();
    out.push(START);
    out.extend_from_slice(&frame.address.0);
    out.push(START);
    out.push(frame.control.0);
    out.push(frame.data.len() as u8);
    out.extend(frame.data.iter().map(|b| b.wrapping_add(DATA_OFFSET)));
    let cs = checksum(&out[start..]);
    out.push(cs);
    out.push(END);
    Ok(())
}

/// The wire form of `frame`, preceded by `wakeup` FE bytes.
pub fn encode(frame: &Frame, wakeup: usize) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_into(frame, wakeup, &mut out)?;
    Ok(out)
}

/// Looks for one frame at the front of `buf`.
///
/// Never panics and never reads past `buf`. Leading wake-up bytes are consumed silently
/// with the frame; other bytes before a start byte come back as [`FrameError::Garbage`] so that
/// the caller can count them. A start byte that does not begin a valid frame is skipped one
/// byte at a time, so a real frame hidden behind it is still found (resynchronisation).
pub fn decode(buf: &[u8]) -> Decoded {
    let Some(start) = buf.iter().position(|b| *b == START) else {
        // No start byte: everything that is not a wake-up byte is garbage.
        let garbage = buf.iter().filter(|b| **b != WAKEUP).count();
        return if garbage > 0 {
            Decoded::Skip {
                consumed: buf.len(),
                error: FrameError::Garbage(garbage),
            }
        } else {
            Decoded::NeedMore
        };
    };
    let garbage = buf[..start].iter().filter(|b| **b != WAKEUP).count();
    if garbage > 0 {
        return Decoded::Skip {
            consumed: start,
            error: FrameError::Garbage(garbage),
        };
    }
    let f = &buf[start..];
    if f.len() < 8 {
        return Decoded::NeedMore;
    }
    if f[7] != START {
        return Decoded::Skip {
            consumed: start + 1,
            error: FrameError::BadHeader,
        };
    }
    if f.len() < 10 {
        return Decoded::NeedMore;
    }
    let len = f[9] as usize;
    if len > MAX_DATA_LEN {
        return Decoded::Skip {
            consumed: start + 1,
            error: FrameError::Oversized(f[9]),
        };
    }
    let total = OVERHEAD + len;
    if f.len() < total {
        // Either the frame is still arriving, or this start was false (garbage that looks
        // like a header, a frame cut short). If a whole valid frame starts later in the
        // buffer, the start was false: skip to that frame instead of waiting forever.
        if let Some(p) = later_complete_frame(buf, start + 1) {
            return Decoded::Skip {
                consumed: p,
                error: FrameError::Truncated,
            };
        }
        return Decoded::NeedMore;
    }
    let computed = checksum(&f[..10 + len]);
    let expected = f[10 + len];
    if computed != expected {
        return Decoded::Skip {
            consumed: start + 1,
            error: FrameError::Checksum { expected, computed },
        };
    }
    if f[11 + len] != END {
        return Decoded::Skip {
            consumed: start + 1,
            error: FrameError::BadEnd(f[11 + len]),
        };
    }
    let mut address = [0u8; 6];
    address.copy_from_slice(&f[1..7]);
    let frame = Frame {
        address: Address(address),
        control: Control(f[8]),
        data: f[10..10 + len]
            .iter()
            .map(|b| b.wrapping_sub(DATA_OFFSET))
            .collect(),
    };
    Decoded::Frame {
        frame,
        consumed: start + total,
    }
}

/// Position of the first start byte at or after `from` that begins a complete, valid frame.
fn later_complete_frame(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len())
        .filter(|&p| buf[p] == START)
        .find(|&p| complete_frame_at(&buf[p..]))
}

fn complete_frame_at(f: &[u8]) -> bool {
    if f.len() < OVERHEAD || f[7] != START {
        return false;
    }
    let len = f[9] as usize;
    len <= MAX_DATA_LEN
        && f.len() >= OVERHEAD + len
        && checksum(&f[..10 + len]) == f[10 + len]
        && f[11 + len] == END
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    #[test]
    fn read_address_broadcast_matches_the_standard_frame() {
        // The frame every DL/T 645-2007 tool sends to ask a lone meter for its address.
        let frame = Frame {
            address: Address::WILDCARD,
            control: Control::request(func::READ_ADDRESS),
            data: vec![],
        };
        assert_eq!(
            encode(&frame, 4).unwrap(),
            hex("FE FE FE FE 68 AA AA AA AA AA AA 68 13 00 DF 16")
        );
    }

    #[test]
    fn read_forward_active_energy_request_byte_by_byte() {
        // Meter 123456789012, DI 00 01 00 00 (forward active energy, total).
        // Address low digits first: 12 90 78 56 34 12; DI low byte first plus 33: 33 33 34 33.
        let frame = Frame {
            address: Address::parse("123456789012").unwrap(),
            control: Control::request(func::READ_DATA),
            data: vec![0x00, 0x00, 0x01, 0x00],
        };
        let wire = encode(&frame, 0).unwrap();
        let expected_head = hex("68 12 90 78 56 34 12 68 11 04 33 33 34 33");
        assert_eq!(&wire[..14], &expected_head[..]);
        assert_eq!(wire[14], checksum(&expected_head));
        assert_eq!(wire[14], 0x68);
        assert_eq!(wire[15], 0x16);
    }

    #[test]
    fn decodes_a_reply_with_wakeup_bytes() {
        // Reply of meter 000000000001 to 00 01 00 00 with 12345.67 kWh:
        // DI 00 00 01 00 -> 33 33 34 33, value 67 45 23 01 -> 9A 78 56 34.
        let mut wire = hex("FE FE 68 01 00 00 00 00 00 68 91 08 33 33 34 33 9A 78 56 34");
        let cs = checksum(&wire[2..]);
        wire.push(cs);
        wire.push(0x16);
        match decode(&wire) {
            Decoded::Frame { frame, consumed } => {
                assert_eq!(consumed, wire.len());
                assert_eq!(frame.address.to_string(), "000000000001");
                assert!(frame.control.is_reply());
                assert_eq!(frame.control.function(), func::READ_DATA);
                assert_eq!(frame.data, vec![0, 0, 1, 0, 0x67, 0x45, 0x23, 0x01]);
            }
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[test]
    fn partial_frames_need_more() {
        let wire = encode(
            &Frame {
                address: Address::parse("000000000001").unwrap(),
                control: Control::request(func::READ_DATA),
                data: vec![0, 0, 1, 0],
            },
            2,
        )
        .unwrap();
        for cut in 0..wire.len() {
            assert_eq!(decode(&wire[..cut]), Decoded::NeedMore, "cut at {cut}");
        }
    }

    #[test]
    fn resynchronises_after_garbage_and_false_start() {
        let good = encode(
            &Frame {
                address: Address::parse("000000000002").unwrap(),
                control: Control::reply(func::READ_ADDRESS, false),
                data: vec![2, 0, 0, 0, 0, 0],
            },
            0,
        )
        .unwrap();
        let mut wire = vec![0x01, 0x02, 0x68, 0x00, 0x68];
        wire.extend_from_slice(&good);
        let mut pos = 0;
        let mut errors = vec![];
        loop {
            match decode(&wire[pos..]) {
                Decoded::Frame { frame, consumed } => {
                    pos += consumed;
                    assert_eq!(frame.address.to_string(), "000000000002");
                    break;
                }
                Decoded::Skip { consumed, error } => {
                    errors.push(error);
                    pos += consumed;
                }
                Decoded::NeedMore => panic!("stalled at {pos}"),
            }
        }
        assert_eq!(pos, wire.len());
        assert_eq!(errors[0], FrameError::Garbage(2));
        assert!(errors.len() >= 2);
    }

    #[test]
    fn rejects_bad_checksum_end_and_oversize() {
        let mut wire = encode(
            &Frame {
                address: Address::parse("000000000001").unwrap(),
                control: Control::request(func::READ_DATA),
                data: vec![0, 0, 1, 0],
            },
            0,
        )
        .unwrap();
        let n = wire.len();
        wire[n - 2] ^= 0xFF;
        assert!(matches!(
            decode(&wire),
            Decoded::Skip {
                error: FrameError::Checksum { .. },
                consumed: 1
            }
        ));
        wire[n - 2] ^= 0xFF;
        wire[n - 1] = 0x17;
        assert_eq!(
            decode(&wire),
            Decoded::Skip {
                consumed: 1,
                error: FrameError::BadEnd(0x17)
            }
        );
        let oversized = hex("68 01 00 00 00 00 00 68 91 FF");
        assert_eq!(
            decode(&oversized),
            Decoded::Skip {
                consumed: 1,
                error: FrameError::Oversized(0xFF)
            }
        );
        let too_long = Frame {
            address: Address::WILDCARD,
            control: Control(0x11),
            data: vec![0; 201],
        };
        assert_eq!(encode(&too_long, 0), Err(EncodeError::TooLong(201)));
    }

    #[test]
    fn address_parsing_and_wildcards() {
        let a = Address::parse("000000000001").unwrap();
        assert_eq!(a.0, [1, 0, 0, 0, 0, 0]);
        assert!(Address::parse("00000000001").is_err());
        assert!(Address::parse("00000000000x").is_err());
        let w = Address::parse("AAAAAAAAAA01").unwrap();
        assert_eq!(w.0, [1, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA]);
        assert!(w.matches(&a));
        assert!(!w.matches(&Address::parse("000000000002").unwrap()));
        assert!(Address::BROADCAST.matches(&a));
        assert!(Address::WILDCARD.matches(&a));
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn any_frame() -> impl Strategy<Value = Frame> {
            (
                proptest::array::uniform6(any::<u8>()),
                any::<u8>(),
                proptest::collection::vec(any::<u8>(), 0..=MAX_DATA_LEN),
            )
                .prop_map(|(a, c, data)| Frame {
                    address: Address(a),
                    control: Control(c),
                    data,
                })
        }

        proptest! {
            #[test]
            fn encode_then_decode_is_identity(frame in any_frame(), wakeup in 0usize..5) {
                let wire = encode(&frame, wakeup).unwrap();
                prop_assert_eq!(decode(&wire), Decoded::Frame { frame, consumed: wire.len() });
            }

            #[test]
            fn decode_never_panics_and_always_progresses(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
                let mut pos = 0;
                while let Decoded::Frame { consumed, .. } | Decoded::Skip { consumed, .. } =
                    decode(&bytes[pos..])
                {
                    prop_assert!(consumed > 0);
                    pos += consumed;
                    prop_assert!(pos <= bytes.len());
                }
            }

            #[test]
            fn a_frame_is_found_behind_any_garbage(
                garbage in proptest::collection::vec(prop_oneof![any::<u8>(), Just(START), Just(WAKEUP)], 0..64),
                frame in any_frame(),
            ) {
                let mut wire = garbage.clone();
                wire.extend(encode(&frame, 2).unwrap());
                let mut pos = 0;
                let mut found = None;
                let mut last_start = 0;
                loop {
                    match decode(&wire[pos..]) {
                        Decoded::Frame { frame, consumed } => {
                            found = Some(frame);
                            last_start = pos;
                            pos += consumed;
                        }
                        Decoded::Skip { consumed, .. } => pos += consumed,
                        Decoded::NeedMore => break,
                    }
                }
                prop_assert_eq!(pos, wire.len(), "everything consumed, nothing left waiting");
                // The last frame found is ours, unless the garbage happened to begin a frame
                // that is valid to the last byte (checksum and end byte included) and so
                // swallows ours: no decoder could tell, and the client would ignore it by
                // its address and control code.
                let swallowed = last_start < garbage.len();
                prop_assert!(found == Some(frame) || swallowed);
            }
        }
    }
}
