//! Links: how a bus reaches its devices, written as a URL.
//!
//! - `serial:///dev/ttyS1?baud=2400&parity=even` — a local serial port, raw bytes.
//! - `tcp://10.0.0.5:8899` — a TCP socket: a serial-to-Ethernet converter in transparent
//!   mode for DL/T 645, or a Modbus TCP server (MBAP framing) for Modbus.
//! - `rtu-serial:///dev/ttyS2?baud=9600` — Modbus RTU on a local serial port.
//! - `rtu-tcp://10.0.0.6:502` — Modbus RTU framing carried over TCP by a converter.
//!
//! Serial options: `baud`, `parity` (`none`, `even`, `odd`), `data_bits` (7, 8) and
//! `stop_bits` (1, 2); what is not given comes from the protocol's defaults.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_serial::SerialPortBuilderExt;

/// A byte stream a protocol client can own: serial port, TCP socket, pty.
pub trait LineIo: AsyncRead + AsyncWrite + Unpin + Send + fmt::Debug + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + fmt::Debug + 'static> LineIo for T {}

/// An open line.
pub type LineStream = Box<dyn LineIo>;

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Parity {
    /// No parity bit.
    None,
    /// Even parity (DL/T 645's default).
    Even,
    /// Odd parity.
    Odd,
}

/// Serial line settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SerialSettings {
    /// Bits per second.
    pub baud: u32,
    /// Data bits, 7 or 8.
    pub data_bits: u8,
    /// Parity.
    pub parity: Parity,
    /// Stop bits, 1 or 2.
    pub stop_bits: u8,
}

impl SerialSettings {
    /// DL/T 645-2007's default: 2400 baud, 8 data bits, even parity, 1 stop bit.
    pub const DLT645: SerialSettings = SerialSettings {
        baud: 2400,
        data_bits: 8,
        parity: Parity::Even,
        stop_bits: 1,
    };
    /// Modbus RTU's usual default: 9600 8N1.
    pub const MODBUS_RTU: SerialSettings = SerialSettings {
        baud: 9600,
        data_bits: 8,
        parity: Parity::None,
        stop_bits: 1,
    };

    /// Bits on the wire per byte: start bit, data bits, parity bit, stop bits.
    pub fn bits_per_byte(&self) -> u32 {
        1 + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits)
    }

    /// Time one byte takes on the line.
    pub fn byte_time(&self) -> Duration {
        Duration::from_secs_f64(f64::from(self.bits_per_byte()) / f64::from(self.baud.max(1)))
    }
}

impl fmt::Display for SerialSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.parity {
            Parity::None => 'N',
            Parity::Even => 'E',
            Parity::Odd => 'O',
        };
        write!(f, "{} {}{}{}", self.baud, self.data_bits, p, self.stop_bits)
    }
}

/// Serial options as written in a link; unset ones take the protocol's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SerialOverrides {
    /// `baud=`
    pub baud: Option<u32>,
    /// `data_bits=`
    pub data_bits: Option<u8>,
    /// `parity=`
    pub parity: Option<Parity>,
    /// `stop_bits=`
    pub stop_bits: Option<u8>,
}

impl SerialOverrides {
    /// These overrides applied over `defaults`.
    pub fn over(&self, defaults: SerialSettings) -> SerialSettings {
        SerialSettings {
            baud: self.baud.unwrap_or(defaults.baud),
            data_bits: self.data_bits.unwrap_or(defaults.data_bits),
            parity: self.parity.unwrap_or(defaults.parity),
            stop_bits: self.stop_bits.unwrap_or(defaults.stop_bits),
        }
    }
}

/// Framing carried by the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Framing {
    /// Raw bytes: DL/T 645 frames, or Modbus TCP (MBAP) on a `tcp://` link.
    Raw,
    /// Modbus RTU frames (with CRC).
    Rtu,
}

/// Where the line is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A local serial device (or a pseudo-terminal).
    Serial {
        /// Device path.
        path: PathBuf,
        /// Options from the URL.
        options: SerialOverrides,
    },
    /// A TCP peer.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
}

/// A parsed link URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Link {
    /// Where.
    pub endpoint: Endpoint,
    /// How bytes are framed.
    pub framing: Framing,
    text: String,
}

/// A link URL that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LinkError {
    /// Not a URL at all.
    #[error(
        "link {0:?} is not a URL; write serial:///dev/ttyS1?baud=2400, tcp://HOST:PORT, rtu-serial:///dev/ttyS2 or rtu-tcp://HOST:PORT"
    )]
    NotUrl(String),
    /// A scheme we do not know.
    #[error("link {link:?}: unknown scheme {scheme:?}; use serial, tcp, rtu-serial or rtu-tcp")]
    Scheme {
        /// The link.
        link: String,
        /// Its scheme.
        scheme: String,
    },
    /// Something missing or wrong in it.
    #[error("link {link:?}: {reason}")]
    Invalid {
        /// The link.
        link: String,
        /// What is wrong.
        reason: String,
    },
}

impl Link {
    /// Parses a link URL.
    pub fn parse(text: &str) -> Result<Self, LinkError> {
        let url = url::Url::parse(text).map_err(|_| LinkError::NotUrl(text.to_string()))?;
        let invalid = |reason: String| LinkError::Invalid {
            link: text.to_string(),
            reason,
        };
        let (serial, framing) = match url.scheme() {
            "serial" => (true, Framing::Raw),
            "tcp" => (false, Framing::Raw),
            "rtu-serial" => (true, Framing::Rtu),
            "rtu-tcp" => (false, Framing::Rtu),
            other => {
                return Err(LinkError::Scheme {
                    link: text.to_string(),
                    scheme: other.to_string(),
                });
            }
        };
        let endpoint = if serial {
            if url.host_str().is_some_and(|h| !h.is_empty()) {
                return Err(invalid(
                    "a serial link has no host: write three slashes, serial:///dev/ttyS1".into(),
                ));
            }
            let path = url.path();
            if path.is_empty() || path == "/" {
                return Err(invalid("no device path".into()));
            }
            let mut options = SerialOverrides::default();
            for (k, v) in url.query_pairs() {
                match k.as_ref() {
                    "baud" => {
                        options.baud = Some(
                            v.parse()
                                .ok()
                                .filter(|b| *b > 0)
                                .ok_or_else(|| invalid(format!("baud={v} is not a rate")))?,
                        )
                    }
                    "parity" => {
                        options.parity = Some(match v.to_ascii_lowercase().as_str() {
                            "none" | "n" => Parity::None,
                            "even" | "e" => Parity::Even,
                            "odd" | "o" => Parity::Odd,
                            _ => return Err(invalid(format!("parity={v}: use none, even or odd"))),
                        })
                    }
                    "data_bits" => {
                        options.data_bits = Some(match v.as_ref() {
                            "7" => 7,
                            "8" => 8,
                            _ => return Err(invalid(format!("data_bits={v}: use 7 or 8"))),
                        })
                    }
                    "stop_bits" => {
                        options.stop_bits = Some(match v.as_ref() {
                            "1" => 1,
                            "2" => 2,
                            _ => return Err(invalid(format!("stop_bits={v}: use 1 or 2"))),
                        })
                    }
                    other => {
                        return Err(invalid(format!(
                            "unknown option {other:?}; serial options are baud, parity, data_bits, stop_bits"
                        )));
                    }
                }
            }
            Endpoint::Serial {
                path: PathBuf::from(path),
                options,
            }
        } else {
            let host = url
                .host_str()
                .filter(|h| !h.is_empty())
                .ok_or_else(|| invalid("no host".into()))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = url
                .port()
                .ok_or_else(|| invalid("no port: write tcp://HOST:PORT".into()))?;
            if url.query().is_some() {
                return Err(invalid("TCP links take no options".into()));
            }
            Endpoint::Tcp { host, port }
        };
        Ok(Link {
            endpoint,
            framing,
            text: text.to_string(),
        })
    }

    /// The URL as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True for `serial://` and `rtu-serial://`.
    pub fn is_serial(&self) -> bool {
        matches!(self.endpoint, Endpoint::Serial { .. })
    }

    /// Opens the line. `defaults` fills serial options the URL leaves out; `connect_timeout`
    /// bounds a TCP connect.
    pub async fn open(
        &self,
        defaults: SerialSettings,
        connect_timeout: Duration,
    ) -> io::Result<LineStream> {
        match &self.endpoint {
            Endpoint::Serial { path, options } => {
                let s = options.over(defaults);
                let port = open_serial(path, s)?;
                Ok(Box::new(port))
            }
            Endpoint::Tcp { host, port } => {
                let connect = tokio::net::TcpStream::connect((host.as_str(), *port));
                let stream = tokio::time::timeout(connect_timeout, connect)
                    .await
                    .map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "no TCP connection to {host}:{port} within {connect_timeout:?}"
                            ),
                        )
                    })??;
                stream.set_nodelay(true)?;
                Ok(Box::new(stream))
            }
        }
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Link {
    type Err = LinkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Link::parse(s)
    }
}

/// Opens a serial device (or pty) with `s`.
pub fn open_serial(
    path: &std::path::Path,
    s: SerialSettings,
) -> io::Result<tokio_serial::SerialStream> {
    let parity = match s.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let data_bits = if s.data_bits == 7 {
        tokio_serial::DataBits::Seven
    } else {
        tokio_serial::DataBits::Eight
    };
    let stop_bits = if s.stop_bits == 2 {
        tokio_serial::StopBits::Two
    } else {
        tokio_serial::StopBits::One
    };
    tokio_serial::new(path.to_string_lossy(), s.baud)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(stop_bits)
        .open_native_async()
        .map_err(|e| io::Error::other(format!("cannot open {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_four_schemes() {
        let l = Link::parse("serial:///dev/ttyS1?baud=2400&parity=even").unwrap();
        assert_eq!(l.framing, Framing::Raw);
        match &l.endpoint {
            Endpoint::Serial { path, options } => {
                assert_eq!(path, &PathBuf::from("/dev/ttyS1"));
                let s = options.over(SerialSettings::MODBUS_RTU);
                assert_eq!(s.baud, 2400);
                assert_eq!(s.parity, Parity::Even);
                assert_eq!(s.to_string(), "2400 8E1");
            }
            other => panic!("{other:?}"),
        }
        let l = Link::parse("tcp://10.0.0.5:8899").unwrap();
        assert_eq!(
            l.endpoint,
            Endpoint::Tcp {
                host: "10.0.0.5".into(),
                port: 8899
            }
        );
        assert_eq!(
            Link::parse("rtu-serial:///dev/ttyS2?baud=9600")
                .unwrap()
                .framing,
            Framing::Rtu
        );
        assert_eq!(
            Link::parse("rtu-tcp://[::1]:502").unwrap().framing,
            Framing::Rtu
        );
    }

    #[test]
    fn rejects_bad_links_with_reasons() {
        assert!(matches!(Link::parse("ttyS1"), Err(LinkError::NotUrl(_))));
        assert!(matches!(
            Link::parse("udp://h:1"),
            Err(LinkError::Scheme { .. })
        ));
        assert!(matches!(
            Link::parse("tcp://h"),
            Err(LinkError::Invalid { .. })
        ));
        assert!(matches!(
            Link::parse("serial://dev/ttyS1"),
            Err(LinkError::Invalid { .. })
        ));
        assert!(matches!(
            Link::parse("serial:///dev/ttyS1?baud=fast"),
            Err(LinkError::Invalid { .. })
        ));
        assert!(matches!(
            Link::parse("serial:///dev/ttyS1?speed=9600"),
            Err(LinkError::Invalid { .. })
        ));
    }

    #[test]
    fn byte_time_at_2400_8e1() {
        let t = SerialSettings::DLT645.byte_time();
        assert_eq!(SerialSettings::DLT645.bits_per_byte(), 11);
        assert!((t.as_secs_f64() - 11.0 / 2400.0).abs() < 1e-9);
    }
}
