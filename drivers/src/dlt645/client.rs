//! DL/T 645-2007 master (client) over any byte stream.
//!
//! The client owns the line: one request in flight, then it waits for the reply, so several
//! meters on one RS-485 line are served by one `Client`. It returns as soon as the reply frame
//! is complete (it parses the length byte), so it adds no idle time of its own to the line.

use std::io;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::di::{self, DataId, Value, ValueError};
use super::frame::{self, Address, Control, Decoded, Frame, FrameError, func};
use super::{ErrorWord, MeterTime, RemoteControl};

/// Timing and framing options of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    /// How long to wait for the first byte of a reply, from the end of the request.
    pub response_timeout: Duration,
    /// Longest silence allowed between two bytes of one reply (DL/T 645: 500 ms).
    pub inter_byte_timeout: Duration,
    /// FE wake-up bytes sent before each request (DL/T 645 suggests 4).
    pub wakeup_bytes: usize,
    /// Largest number of follow-up frames (12) fetched for one read.
    pub max_followups: u8,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            response_timeout: Duration::from_millis(1000),
            inter_byte_timeout: Duration::from_millis(500),
            wakeup_bytes: 4,
            max_followups: 16,
        }
    }
}

/// Why a DL/T 645 exchange failed.
#[derive(Debug, Error)]
pub enum Dlt645Error {
    /// No complete reply in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// Bytes arrived but no valid frame among them (replies of several meters colliding,
    /// noise, a wrong baud rate).
    #[error(
        "garbled reply: {0} bytes and no valid frame (several meters answering, noise, or a wrong baud rate)"
    )]
    Garbled(u64),
    /// A reply began but stopped before its end.
    #[error("reply stopped after {0} bytes (inter-byte gap exceeded)")]
    Incomplete(usize),
    /// A whole reply arrived with a wrong checksum or end byte.
    #[error("corrupt reply: {0}")]
    Corrupt(FrameError),
    /// The meter answered with an abnormal reply.
    #[error("meter {address} refused control code {function:02X}: {word}")]
    Meter {
        /// Meter that answered.
        address: Address,
        /// Function code of the request.
        function: u8,
        /// Its error word.
        word: ErrorWord,
    },
    /// A reply that is valid but does not answer the request.
    #[error("unexpected reply: {0}")]
    Unexpected(String),
    /// The value bytes do not fit the identifier's format.
    #[error("cannot decode value: {0}")]
    Value(#[from] ValueError),
    /// The request cannot be encoded.
    #[error("cannot encode request: {0}")]
    Encode(#[from] frame::EncodeError),
    /// The line failed (serial port gone, TCP reset).
    #[error("line I/O error: {0}")]
    Io(#[from] io::Error),
}

impl Dlt645Error {
    /// True when the line itself failed and should be reopened.
    pub fn is_link_failure(&self) -> bool {
        matches!(self, Dlt645Error::Io(_))
    }
}

/// Counters of what the client saw on its line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LineCounters {
    /// Requests sent.
    pub requests: u64,
    /// Bytes sent (including wake-up bytes).
    pub bytes_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes skipped as garbage while looking for a frame.
    pub garbage_bytes: u64,
    /// Frames rejected (checksum, end byte, oversize, bad header).
    pub bad_frames: u64,
    /// Frames ignored because they did not answer the request (echo, late replies).
    pub ignored_frames: u64,
}

/// A DL/T 645 master on one line.
#[derive(Debug)]
pub struct Client<S> {
    io: S,
    buf: Vec<u8>,
    out: Vec<u8>,
    opts: ClientOptions,
    counters: LineCounters,
}

impl<S> Client<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// A client on `io` with `opts`.
    pub fn new(io: S, opts: ClientOptions) -> Self {
        Client {
            io,
            buf: Vec::with_capacity(256),
            out: Vec::with_capacity(256),
            opts,
            counters: LineCounters::default(),
        }
    }

    /// What the client has seen on its line so far.
    pub fn counters(&self) -> LineCounters {
        self.counters
    }

    /// The options in use.
    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    /// Gives the byte stream back.
    pub fn into_inner(self) -> S {
        self.io
    }

    async fn send(&mut self, req: &Frame) -> Result<(), Dlt645Error> {
        // A late reply to an earlier request may still sit in the buffer: drop it.
        self.buf.clear();
        self.out.clear();
        frame::encode_into(req, self.opts.wakeup_bytes, &mut self.out)?;
        self.io.write_all(&self.out).await?;
        self.io.flush().await?;
        self.counters.requests += 1;
        self.counters.bytes_out += self.out.len() as u64;
        Ok(())
    }

    /// Sends `req` and returns the meter's reply to it.
    ///
    /// Frames that are not a reply to this request (an RS-485 converter's echo of our own
    /// request, a late reply for another meter) are skipped and counted. An abnormal reply
    /// becomes [`Dlt645Error::Meter`].
    pub async fn transact(&mut self, req: &Frame) -> Result<Frame, Dlt645Error> {
        self.send(req).await?;
        let reply = self.receive(req).await?;
        if reply.control.is_abnormal() {
            return Err(Dlt645Error::Meter {
                address: reply.address,
                function: reply.control.function(),
                word: ErrorWord::from_data(&reply.data),
            });
        }
        Ok(reply)
    }

    async fn receive(&mut self, req: &Frame) -> Result<Frame, Dlt645Error> {
        let started = Instant::now();
        let deadline = started + self.opts.response_timeout;
        let bytes_before = self.counters.bytes_in;
        let mut last_byte: Option<Instant> = None;
        let mut chunk = [0u8; 256];
        loop {
            // Decode everything already buffered.
            loop {
                match frame::decode(&self.buf) {
                    Decoded::Frame { frame, consumed } => {
                        self.buf.drain(..consumed);
                        if answers(req, &frame) {
                            return Ok(frame);
                        }
                        self.counters.ignored_frames += 1;
                    }
                    Decoded::Skip { consumed, error } => {
                        self.buf.drain(..consumed);
                        match error {
                            FrameError::Garbage(n) => self.counters.garbage_bytes += n as u64,
                            FrameError::Checksum { .. } | FrameError::BadEnd(_) => {
                                // A whole frame arrived damaged: the meter answered, the line
                                // corrupted it. Nothing better will follow; say so now.
                                self.counters.bad_frames += 1;
                                self.buf.clear();
                                return Err(Dlt645Error::Corrupt(error));
                            }
                            FrameError::BadHeader
                            | FrameError::Oversized(_)
                            | FrameError::Truncated => {
                                self.counters.bad_frames += 1;
                            }
                        }
                    }
                    Decoded::NeedMore => break,
                }
            }
            let wait_until = match last_byte {
                Some(t) if !self.buf.is_empty() => {
                    (t + self.opts.inter_byte_timeout).min(deadline.max(t))
                }
                _ => deadline,
            };
            let read = tokio::time::timeout_at(wait_until, self.io.read(&mut chunk)).await;
            match read {
                Ok(Ok(0)) => {
                    return Err(Dlt645Error::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "line closed by the peer",
                    )));
                }
                Ok(Ok(n)) => {
                    self.counters.bytes_in += n as u64;
                    self.buf.extend_from_slice(&chunk[..n]);
                    last_byte = Some(Instant::now());
                }
                Ok(Err(e)) => return Err(Dlt645Error::Io(e)),
                Err(_) => {
                    let partial = self.buf.contains(&frame::START);
                    let received = self.counters.bytes_in - bytes_before;
                    let n = self.buf.len();
                    self.buf.clear();
                    return Err(if partial {
                        Dlt645Error::Incomplete(n)
                    } else if received > 0 {
                        Dlt645Error::Garbled(received)
                    } else {
                        Dlt645Error::Timeout(started.elapsed())
                    });
                }
            }
        }
    }

    /// Reads the raw value bytes of `di` from `meter`, fetching follow-up frames (12) when the
    /// meter says more follows.
    pub async fn read_raw(&mut self, meter: Address, di: DataId) -> Result<Vec<u8>, Dlt645Error> {
        let req = Frame {
            address: meter,
            control: Control::request(func::READ_DATA),
            data: di.to_wire().to_vec(),
        };
        let reply = self.transact(&req).await?;
        check_di(&reply, di)?;
        let mut value = reply.data[4..].to_vec();
        let mut more = reply.control.more_follows();
        let mut seq: u8 = 0;
        while more {
            if seq >= self.opts.max_followups {
                return Err(Dlt645Error::Unexpected(format!(
                    "more than {} follow-up frames for {di}",
                    self.opts.max_followups
                )));
            }
            seq += 1;
            let mut data = di.to_wire().to_vec();
            data.push(seq);
            let req = Frame {
                address: meter,
                control: Control::request(func::READ_FOLLOWUP),
                data,
            };
            let reply = self.transact(&req).await?;
            check_di(&reply, di)?;
            // Follow-up data ends with the frame sequence number.
            let body = &reply.data[4..];
            let Some((_seq, payload)) = body.split_last() else {
                return Err(Dlt645Error::Unexpected(
                    "follow-up frame without a sequence number".into(),
                ));
            };
            value.extend_from_slice(payload);
            more = reply.control.more_follows();
        }
        Ok(value)
    }

    /// Reads `di` from `meter` and decodes it with the identifier table.
    pub async fn read_value(&mut self, meter: Address, di: DataId) -> Result<Value, Dlt645Error> {
        let raw = self.read_raw(meter, di).await?;
        Ok(di::decode_value(di, &raw)?)
    }

    /// Asks for the address of the meter(s) matching `pattern` (13). With
    /// [`Address::WILDCARD`] every meter on the line answers, so use it with one meter, or
    /// with a partly wildcarded address while searching.
    pub async fn read_address(&mut self, pattern: Address) -> Result<Address, Dlt645Error> {
        let req = Frame {
            address: pattern,
            control: Control::request(func::READ_ADDRESS),
            data: vec![],
        };
        let reply = self.transact(&req).await?;
        let bytes: [u8; 6] = reply
            .data
            .get(..6)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Dlt645Error::Unexpected("read-address reply without 6 bytes".into()))?;
        let addr = Address(bytes);
        if addr != reply.address {
            tracing::debug!(%addr, frame = %reply.address, "address in data differs from frame");
        }
        Ok(addr)
    }

    /// Broadcast time synchronisation (08). Meters do not reply.
    pub async fn broadcast_time(&mut self, time: MeterTime) -> Result<(), Dlt645Error> {
        let req = Frame {
            address: Address::BROADCAST,
            control: Control::request(func::BROADCAST_TIME),
            data: time.to_bcd().to_vec(),
        };
        self.send(&req).await
    }

    /// Remote control (1C): trip, close, alarm... Returns when the meter confirms (9C).
    pub async fn remote_control(
        &mut self,
        meter: Address,
        rc: &RemoteControl,
    ) -> Result<(), Dlt645Error> {
        let req = Frame {
            address: meter,
            control: Control::request(func::REMOTE_CONTROL),
            data: rc.to_data(),
        };
        self.transact(&req).await.map(|_| ())
    }
}

/// True when `reply` is a meter's answer to `req`.
fn answers(req: &Frame, reply: &Frame) -> bool {
    reply.control.is_reply()
        && reply.control.function() == req.control.function()
        && (req.address.matches(&reply.address) || req.address == reply.address)
}

fn check_di(reply: &Frame, di: DataId) -> Result<(), Dlt645Error> {
    match DataId::from_wire(&reply.data) {
        Some(got) if got == di => Ok(()),
        Some(got) => Err(Dlt645Error::Unexpected(format!(
            "asked for {di}, meter answered {got}"
        ))),
        None => Err(Dlt645Error::Unexpected(format!(
            "reply for {di} has {} data bytes, fewer than its identifier",
            reply.data.len()
        ))),
    }
}
