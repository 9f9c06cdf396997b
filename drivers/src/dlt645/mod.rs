//! DL/T 645-2007, the Chinese multi-function electricity meter protocol.
//!
//! - [`frame`]: the frame codec, pure code (encode, decode, resynchronise).
//! - [`di`]: data identifiers and the formats of their values.
//! - [`client`]: an async master over any byte stream (serial port, TCP converter, pty).
//! - [`sim`]: simulated meters on a simulated line.

pub mod client;
pub mod di;
pub mod frame;
#[cfg(feature = "sim")]
pub mod sim;
#[cfg(test)]
mod vectors;

use std::fmt;

pub use client::{Client, ClientOptions, Dlt645Error};
pub use di::{DataId, Value};
pub use frame::{Address, Control, Frame};

/// The error word of an abnormal reply (`D1`, `D2`, `D3`, `D4`, `DC`...).
///
/// DL/T 645-2007 defines one byte (bit 0 other error, bit 1 no requested data, bit 2 password
/// wrong or not authorised, bit 3 baud rate cannot be changed, bit 4 too many year time zones,
/// bit 5 too many day periods, bit 6 too many tariffs). Some meters send two bytes for remote
/// control; the second byte is kept in the high half.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorWord(pub u16);

impl ErrorWord {
    const BITS: [&'static str; 8] = [
        "other error",
        "no requested data",
        "password wrong or not authorised",
        "baud rate cannot be changed",
        "too many year time zones",
        "too many day periods",
        "too many tariffs",
        "reserved bit 7",
    ];

    /// Reads the error word from an abnormal reply's data.
    pub fn from_data(data: &[u8]) -> Self {
        match data {
            [] => ErrorWord(0),
            [lo] => ErrorWord(u16::from(*lo)),
            [lo, hi, ..] => ErrorWord(u16::from_le_bytes([*lo, *hi])),
        }
    }

    /// The reasons whose bits are set, in English.
    pub fn reasons(self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Self::BITS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, s)| *s)
            .collect();
        if self.0 >> 8 != 0 {
            out.push("vendor-specific bits");
        }
        if out.is_empty() {
            out.push("no reason given");
        }
        out
    }

    /// True when the meter says it has no such data (an identifier it does not support).
    pub fn no_data(self) -> bool {
        self.0 & 0b10 != 0
    }
}

impl fmt::Display for ErrorWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "error word 0x{:02X} ({})",
            self.0,
            self.reasons().join(", ")
        )
    }
}

impl fmt::Debug for ErrorWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ErrorWord({self})")
    }
}

/// Remote control command types (N1 of control code 1C).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RemoteCommand {
    /// 1A: open the load switch (trip).
    Trip,
    /// 1B: allow the customer to close the switch.
    CloseAllowed,
    /// 1C: close the switch directly.
    Close,
    /// 2A: alarm.
    Alarm,
    /// 2B: clear the alarm.
    AlarmClear,
    /// 3A: keep power on (protect).
    Hold,
    /// 3B: release keep-power.
    HoldClear,
}

impl RemoteCommand {
    /// The N1 byte.
    pub fn code(self) -> u8 {
        match self {
            RemoteCommand::Trip => 0x1A,
            RemoteCommand::CloseAllowed => 0x1B,
            RemoteCommand::Close => 0x1C,
            RemoteCommand::Alarm => 0x2A,
            RemoteCommand::AlarmClear => 0x2B,
            RemoteCommand::Hold => 0x3A,
            RemoteCommand::HoldClear => 0x3B,
        }
    }

    /// The command for an N1 byte.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x1A => RemoteCommand::Trip,
            0x1B => RemoteCommand::CloseAllowed,
            0x1C => RemoteCommand::Close,
            0x2A => RemoteCommand::Alarm,
            0x2B => RemoteCommand::AlarmClear,
            0x3A => RemoteCommand::Hold,
            0x3B => RemoteCommand::HoldClear,
            _ => return None,
        })
    }
}

/// A civil date and time as a meter keeps it (local time, two-digit year).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeterTime {
    /// Year within the century, 0..=99.
    pub year: u8,
    /// 1..=12.
    pub month: u8,
    /// 1..=31.
    pub day: u8,
    /// 0..=23.
    pub hour: u8,
    /// 0..=59.
    pub minute: u8,
    /// 0..=59.
    pub second: u8,
}

impl MeterTime {
    /// `ssmmhhDDMMYY` as BCD, seconds first, the layout of time sync (08) and of a remote
    /// control's validity time.
    pub fn to_bcd(self) -> [u8; 6] {
        let v = di::encode_bcd_pairs(&[
            self.year,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
        ]);
        [v[0], v[1], v[2], v[3], v[4], v[5]]
    }

    /// Reads `ssmmhhDDMMYY`; `None` when a byte is not BCD.
    pub fn from_bcd(b: &[u8]) -> Option<Self> {
        let d = |x: u8| -> Option<u8> {
            let (h, l) = (x >> 4, x & 0xF);
            (h <= 9 && l <= 9).then_some(h * 10 + l)
        };
        if b.len() < 6 {
            return None;
        }
        Some(MeterTime {
            second: d(b[0])?,
            minute: d(b[1])?,
            hour: d(b[2])?,
            day: d(b[3])?,
            month: d(b[4])?,
            year: d(b[5])?,
        })
    }

    /// UTC civil time of a Unix timestamp in seconds (meters on a site usually keep local
    /// time; the caller adds the site's offset first).
    pub fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        // Civil-from-days (Howard Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        MeterTime {
            year: year.rem_euclid(100) as u8,
            month: month as u8,
            day: day as u8,
            hour: (rem / 3600) as u8,
            minute: (rem % 3600 / 60) as u8,
            second: (rem % 60) as u8,
        }
    }

    /// The Unix timestamp of this civil time, read as UTC; the inverse of
    /// [`MeterTime::from_unix`] for years 2000..2099.
    pub fn to_unix(self) -> i64 {
        // Days-from-civil (Howard Hinnant's algorithm).
        let y = 2000 + i64::from(self.year) - i64::from(self.month <= 2);
        let m = i64::from(self.month);
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

/// A remote control request (control code 1C).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteControl {
    /// Password level and password: PA P0 P1 P2, as 8 hex digits `PAP2P1P0` would print
    /// (level first). Kept as the four wire bytes.
    pub password: [u8; 4],
    /// Operator code C0..C3, as sent.
    pub operator: [u8; 4],
    /// What to do.
    pub command: RemoteCommand,
    /// Until when the command is valid.
    pub valid_until: MeterTime,
}

impl RemoteControl {
    /// The 16-byte data field: password, operator code, N1, N2 (reserved 00), N3..N8.
    pub fn to_data(&self) -> Vec<u8> {
        let mut d = Vec::with_capacity(16);
        d.extend_from_slice(&self.password);
        d.extend_from_slice(&self.operator);
        d.push(self.command.code());
        d.push(0x00);
        d.extend_from_slice(&self.valid_until.to_bcd());
        d
    }

    /// Parses the data field of a 1C request.
    pub fn from_data(d: &[u8]) -> Option<Self> {
        if d.len() < 16 {
            return None;
        }
        Some(RemoteControl {
            password: d[0..4].try_into().ok()?,
            operator: d[4..8].try_into().ok()?,
            command: RemoteCommand::from_code(d[8])?,
            valid_until: MeterTime::from_bcd(&d[10..16])?,
        })
    }
}

/// Bit 4 of meter status word 3 (04 00 05 03): the load switch is open (tripped).
pub const STATUS3_RELAY_OPEN: u32 = 1 << 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_word_reasons() {
        let w = ErrorWord::from_data(&[0x02]);
        assert!(w.no_data());
        assert_eq!(w.reasons(), vec!["no requested data"]);
        assert_eq!(
            ErrorWord::from_data(&[0x05]).to_string(),
            "error word 0x05 (other error, password wrong or not authorised)"
        );
    }

    #[test]
    fn meter_time_from_unix_and_bcd() {
        // 2026-11-24 22:12:17 UTC
        let t = MeterTime::from_unix(1_795_558_337);
        assert_eq!((t.year, t.month, t.day), (26, 11, 24));
        assert_eq!((t.hour, t.minute, t.second), (22, 12, 17));
        assert_eq!(t.to_bcd(), [0x17, 0x12, 0x22, 0x24, 0x11, 0x26]);
        assert_eq!(MeterTime::from_bcd(&t.to_bcd()), Some(t));
    }

    #[test]
    fn remote_control_layout() {
        let rc = RemoteControl {
            password: [0x02, 0x00, 0x00, 0x00],
            operator: [0x01, 0x00, 0x00, 0x00],
            command: RemoteCommand::Trip,
            valid_until: MeterTime::from_unix(1_795_558_337),
        };
        let d = rc.to_data();
        assert_eq!(d.len(), 16);
        assert_eq!(d[8], 0x1A);
        assert_eq!(RemoteControl::from_data(&d), Some(rc));
    }
}
