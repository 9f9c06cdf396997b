//! Simulated DL/T 645-2007 meters sharing one simulated line.
//!
//! Each meter measures a [`LoadModel`](crate::sim::LoadModel): power follows its setpoint and switch, energy rises
//! with power, a remote-control trip (1C) opens the switch and status word 3 shows it. When
//! several meters match a request's (wildcard) address they all answer and their replies
//! collide on the line, as on real RS-485. Tests can silence a meter or corrupt replies.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::di::{self, DataId};
use super::frame::{self, Address, Control, Decoded, Frame, func};
use super::{MeterTime, RemoteCommand, RemoteControl, STATUS3_RELAY_OPEN};
use crate::sim::{LineTiming, SharedLoad, unix_now};

/// One simulated meter.
#[derive(Debug, Clone)]
pub struct SimMeter {
    /// Its address.
    pub address: Address,
    /// The load it measures (and switches).
    pub load: SharedLoad,
    /// Remote-control password, PA P0 P1 P2 as sent.
    pub password: [u8; 4],
    silent: Arc<AtomicBool>,
}

impl SimMeter {
    /// A meter at `address` measuring `load`, password level 02 / 000000.
    pub fn new(address: Address, load: SharedLoad) -> Self {
        SimMeter {
            address,
            load,
            password: [0x02, 0x00, 0x00, 0x00],
            silent: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Makes the meter stop answering (true) or answer again (false).
    pub fn set_silent(&self, silent: bool) {
        self.silent.store(silent, Ordering::SeqCst);
    }

    fn value(&self, di: DataId, clock_offset: i64) -> Option<Vec<u8>> {
        let now = Instant::now();
        let load = self.load.lock();
        let p = load.power_kw(now);
        let v = load.voltage(now);
        let q = p * 0.2;
        let s = (p * p + q * q).sqrt();
        let pf = if s > 0.0 { p / s } else { 1.0 };
        let i = if v > 0.0 { p * 1000.0 / (3.0 * v) } else { 0.0 };
        let e = load.energy_kwh;
        let [d3, d2, d1, d0] = di.0.to_be_bytes();
        let number = |x: f64| -> Option<Vec<u8>> {
            let info = di::lookup(di)?;
            Some(di::encode_decimal(info.format, x))
        };
        match (d3, d2, d1, d0) {
            // Block reads (DI1 = FF): total and four tariffs of an energy kind.
            (0x00, kind @ 0x00..=0x0A, 0xFF, 0x00) => {
                let single = DataId(u32::from_be_bytes([0, kind, 0, 0]));
                let f = di::lookup(single)?.format;
                let mut out = Vec::new();
                let total = energy_of(kind, e, p);
                out.extend(di::encode_decimal(f, total));
                for share in [0.1, 0.4, 0.3, 0.2] {
                    out.extend(di::encode_decimal(f, total * share));
                }
                Some(out)
            }
            (0x00, kind, tariff, 0x00) => {
                let total = energy_of(kind, e, p);
                let share = match tariff {
                    0 => 1.0,
                    1 => 0.1,
                    2 => 0.4,
                    3 => 0.3,
                    4 => 0.2,
                    _ => 0.0,
                };
                number(total * share)
            }
            (0x02, 0x01, 0x01..=0x03, 0x00) => number(v),
            (0x02, 0x02, 0x01..=0x03, 0x00) => number(i),
            (0x02, 0x03, 0x00, 0x00) => number(p),
            (0x02, 0x03, 0x01..=0x03, 0x00) => number(p / 3.0),
            (0x02, 0x04, 0x00, 0x00) => number(q),
            (0x02, 0x04, 0x01..=0x03, 0x00) => number(q / 3.0),
            (0x02, 0x05, 0x00, 0x00) => number(s),
            (0x02, 0x05, 0x01..=0x03, 0x00) => number(s / 3.0),
            (0x02, 0x06, 0x00..=0x03, 0x00) => number(pf),
            (0x02, 0x80, 0x00, 0x02) => number(load.frequency(now)),
            (0x02, 0x80, 0x00, 0x07) => number(31.5),
            (0x04, 0x00, 0x01, 0x01) => {
                let t = MeterTime::from_unix(unix_now() + clock_offset);
                let weekday = ((unix_now() + clock_offset).div_euclid(86_400) + 4).rem_euclid(7);
                Some(di::encode_bcd_pairs(&[
                    t.year,
                    t.month,
                    t.day,
                    weekday as u8,
                ]))
            }
            (0x04, 0x00, 0x01, 0x02) => {
                let t = MeterTime::from_unix(unix_now() + clock_offset);
                Some(di::encode_bcd_pairs(&[t.hour, t.minute, t.second]))
            }
            (0x04, 0x00, 0x04, 0x01) => Some(self.address.0.to_vec()),
            (0x04, 0x00, 0x05, 0x03) => {
                let w: u16 = if load.on {
                    0
                } else {
                    STATUS3_RELAY_OPEN as u16
                };
                Some(w.to_le_bytes().to_vec())
            }
            (0x04, 0x00, 0x05, 0x01..=0x07) => Some(vec![0, 0]),
            _ => None,
        }
    }

    fn remote_control(&self, rc: &RemoteControl, clock_offset: i64) -> Result<(), u8> {
        if rc.password != self.password {
            return Err(0x04);
        }
        let now = MeterTime::from_unix(unix_now() + clock_offset);
        let key = |t: MeterTime| (t.year, t.month, t.day, t.hour, t.minute, t.second);
        if key(rc.valid_until) < key(now) {
            return Err(0x01);
        }
        let mut load = self.load.lock();
        match rc.command {
            RemoteCommand::Trip => load.on = false,
            RemoteCommand::Close | RemoteCommand::CloseAllowed => load.on = true,
            _ => {}
        }
        Ok(())
    }
}

fn energy_of(kind: u8, forward_kwh: f64, _p: f64) -> f64 {
    match kind {
        0x00 | 0x01 | 0x09 => forward_kwh,
        0x03 | 0x05 => forward_kwh * 0.2,
        _ => 0.0,
    }
}

/// Knobs a test turns on a running line.
#[derive(Debug, Default)]
pub struct LineFaults {
    /// Corrupt the checksum of the next N replies.
    pub corrupt_replies: AtomicU32,
    /// Send the next N replies only half-way.
    pub truncate_replies: AtomicU32,
}

/// What crossed a simulated line, for measuring how busy it was.
#[derive(Debug, Default)]
pub struct LineStats {
    /// Request bytes received (wake-up bytes included).
    pub request_bytes: AtomicU64,
    /// Reply bytes sent.
    pub reply_bytes: AtomicU64,
    /// Requests answered.
    pub exchanges: AtomicU64,
}

/// Several meters on one line.
#[derive(Debug, Clone)]
pub struct SimLine {
    /// The meters.
    pub meters: Vec<SimMeter>,
    /// Line timing.
    pub timing: LineTiming,
    /// FE bytes before each reply.
    pub wakeup_bytes: usize,
    /// Largest value bytes per reply frame; longer values go out as follow-up frames (12).
    pub max_reply_data: usize,
    /// Fault injection.
    pub faults: Arc<LineFaults>,
    /// Traffic counters.
    pub stats: Arc<LineStats>,
}

struct Pending {
    address: Address,
    di: DataId,
    rest: Vec<u8>,
    seq: u8,
}

impl SimLine {
    /// A line with `meters`, unpaced, 2 wake-up bytes on replies.
    pub fn new(meters: Vec<SimMeter>) -> Self {
        SimLine {
            meters,
            timing: LineTiming::UNPACED,
            wakeup_bytes: 2,
            max_reply_data: frame::MAX_DATA_LEN - 5,
            faults: Arc::new(LineFaults::default()),
            stats: Arc::new(LineStats::default()),
        }
    }

    /// Serves requests on `io` until it closes.
    pub async fn serve<S>(&self, mut io: S) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut buf: Vec<u8> = Vec::with_capacity(512);
        let mut chunk = [0u8; 512];
        let mut clock_offset: i64 = 0;
        let mut pending: Vec<Pending> = Vec::new();
        loop {
            let n = io.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            loop {
                match frame::decode(&buf) {
                    Decoded::Frame { frame, consumed } => {
                        let received = Instant::now();
                        buf.drain(..consumed);
                        if frame.control.is_reply() {
                            continue;
                        }
                        let replies = self.answer(&frame, &mut clock_offset, &mut pending);
                        if replies.is_empty() {
                            continue;
                        }
                        let mut wire = Vec::new();
                        for r in &replies {
                            let mut one = Vec::new();
                            if frame::encode_into(r, self.wakeup_bytes, &mut one).is_err() {
                                continue;
                            }
                            collide(&mut wire, &one);
                        }
                        if take_one(&self.faults.corrupt_replies) {
                            let n = wire.len();
                            if n >= 2 {
                                wire[n - 2] = wire[n - 2].wrapping_add(1);
                            }
                        }
                        if take_one(&self.faults.truncate_replies) {
                            wire.truncate(wire.len() / 2);
                        }
                        let done = self
                            .timing
                            .reply_complete_at(received, consumed, wire.len());
                        wait_until_precisely(done).await;
                        io.write_all(&wire).await?;
                        io.flush().await?;
                        self.stats
                            .request_bytes
                            .fetch_add(consumed as u64, Ordering::Relaxed);
                        self.stats
                            .reply_bytes
                            .fetch_add(wire.len() as u64, Ordering::Relaxed);
                        self.stats.exchanges.fetch_add(1, Ordering::Relaxed);
                    }
                    Decoded::Skip { consumed, .. } => {
                        buf.drain(..consumed);
                    }
                    Decoded::NeedMore => break,
                }
            }
        }
    }

    fn answer(
        &self,
        req: &Frame,
        clock_offset: &mut i64,
        pending: &mut Vec<Pending>,
    ) -> Vec<Frame> {
        let function = req.control.function();
        if function == func::BROADCAST_TIME {
            if let Some(t) = MeterTime::from_bcd(&req.data) {
                *clock_offset = t.to_unix() - unix_now();
            }
            return vec![];
        }
        let mut out = Vec::new();
        for meter in &self.meters {
            if meter.silent.load(Ordering::SeqCst) || !req.address.matches(&meter.address) {
                continue;
            }
            let reply_to = |data: Vec<u8>, more: bool| Frame {
                address: meter.address,
                control: Control::reply(function, more),
                data,
            };
            let abnormal = |word: u8| Frame {
                address: meter.address,
                control: Control::abnormal(function),
                data: vec![word],
            };
            let reply = match function {
                func::READ_DATA => match DataId::from_wire(&req.data) {
                    None => abnormal(0x01),
                    Some(di) => match meter.value(di, *clock_offset) {
                        None => abnormal(0x02),
                        Some(value) => {
                            let mut data = di.to_wire().to_vec();
                            let cut = value.len().min(self.max_reply_data);
                            data.extend_from_slice(&value[..cut]);
                            let more = cut < value.len();
                            pending.retain(|p| p.address != meter.address);
                            if more {
                                pending.push(Pending {
                                    address: meter.address,
                                    di,
                                    rest: value[cut..].to_vec(),
                                    seq: 0,
                                });
                            }
                            reply_to(data, more)
                        }
                    },
                },
                func::READ_FOLLOWUP => {
                    let di = DataId::from_wire(&req.data);
                    let seq = req.data.get(4).copied().unwrap_or(0);
                    match pending
                        .iter_mut()
                        .position(|p| p.address == meter.address && Some(p.di) == di)
                    {
                        None => abnormal(0x02),
                        Some(idx) => {
                            let p = &mut pending[idx];
                            p.seq = seq;
                            let cut = p
                                .rest
                                .len()
                                .min(self.max_reply_data.saturating_sub(1).max(1));
                            let mut data = p.di.to_wire().to_vec();
                            data.extend(p.rest.drain(..cut));
                            data.push(seq);
                            let more = !p.rest.is_empty();
                            if !more {
                                pending.remove(idx);
                            }
                            reply_to(data, more)
                        }
                    }
                }
                func::READ_ADDRESS => reply_to(meter.address.0.to_vec(), false),
                func::REMOTE_CONTROL => match RemoteControl::from_data(&req.data) {
                    None => abnormal(0x01),
                    Some(rc) => match meter.remote_control(&rc, *clock_offset) {
                        Ok(()) => reply_to(vec![], false),
                        Err(word) => abnormal(word),
                    },
                },
                _ => abnormal(0x01),
            };
            out.push(reply);
        }
        out
    }
}

/// Several transmitters at once: the line carries a mix of their bytes.
fn collide(wire: &mut Vec<u8>, frame: &[u8]) {
    if wire.is_empty() {
        wire.extend_from_slice(frame);
        return;
    }
    for (i, b) in frame.iter().enumerate() {
        match wire.get_mut(i) {
            // Open-drain-like mix: a 0 bit from either side wins, then scrambled so the
            // checksum cannot survive.
            Some(w) => *w = (*w & *b) ^ 0x5A,
            None => wire.push(*b),
        }
    }
}

/// Waits until `t` to within a few microseconds: tokio's timers round up to the next
/// millisecond, which on a simulated 2400-baud line would add a delay no real line has.
async fn wait_until_precisely(t: Instant) {
    let coarse = t.checked_sub(std::time::Duration::from_millis(2));
    if let Some(c) = coarse.filter(|c| *c > Instant::now()) {
        tokio::time::sleep_until(c).await;
    }
    while Instant::now() < t {
        tokio::task::yield_now().await;
    }
}

fn take_one(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlt645::{Client, ClientOptions, Dlt645Error};
    use crate::sim::LoadModel;

    fn meter(addr: &str, kw: f64) -> SimMeter {
        SimMeter::new(
            Address::parse(addr).unwrap(),
            SharedLoad::new(LoadModel::new(kw, 1000.0, 0.0)),
        )
    }

    fn opts() -> ClientOptions {
        ClientOptions {
            response_timeout: std::time::Duration::from_millis(200),
            ..ClientOptions::default()
        }
    }

    #[test]
    fn unix_of_inverts_from_unix() {
        // Meters keep two-digit years: 2000..=2099 round-trips.
        for secs in [946_684_800i64, 951_782_400, 1_795_558_337, 4_102_444_799] {
            assert_eq!(MeterTime::from_unix(secs).to_unix(), secs);
        }
    }

    #[tokio::test]
    async fn read_values_trip_and_close_over_a_duplex_pipe() {
        let m1 = meter("000000000001", 3.0);
        let line = SimLine::new(vec![m1.clone(), meter("000000000002", 5.0)]);
        let (a, b) = tokio::io::duplex(1024);
        tokio::spawn(async move { line.serve(b).await });
        let mut c = Client::new(a, opts());
        let a1 = Address::parse("000000000001").unwrap();
        let p = c.read_value(a1, DataId(0x0203_0000)).await.unwrap();
        let p = p.as_f64().unwrap();
        assert!((2.8..3.2).contains(&p), "{p}");
        let e = c.read_value(a1, DataId(0x0001_0000)).await.unwrap();
        assert!(e.as_f64().unwrap() >= 1000.0);
        // Unknown identifier: the meter says "no requested data".
        match c.read_value(a1, DataId(0x0EEE_0000)).await {
            Err(Dlt645Error::Meter { word, .. }) => assert!(word.no_data()),
            other => panic!("{other:?}"),
        }
        // Trip, then the relay bit of status word 3 is set and power is zero.
        let rc = RemoteControl {
            password: [0x02, 0, 0, 0],
            operator: [0; 4],
            command: RemoteCommand::Trip,
            valid_until: MeterTime::from_unix(unix_now() + 600),
        };
        c.remote_control(a1, &rc).await.unwrap();
        let w = c.read_value(a1, DataId(0x0400_0503)).await.unwrap();
        assert_eq!(w.as_f64(), Some(f64::from(STATUS3_RELAY_OPEN)));
        assert_eq!(
            c.read_value(a1, DataId(0x0203_0000))
                .await
                .unwrap()
                .as_f64(),
            Some(0.0)
        );
        let wrong = RemoteControl {
            password: [0x02, 1, 2, 3],
            ..rc.clone()
        };
        assert!(matches!(
            c.remote_control(a1, &wrong).await,
            Err(Dlt645Error::Meter { .. })
        ));
        let close = RemoteControl {
            command: RemoteCommand::Close,
            ..rc
        };
        c.remote_control(a1, &close).await.unwrap();
        assert!(
            c.read_value(a1, DataId(0x0203_0000))
                .await
                .unwrap()
                .as_f64()
                .unwrap()
                > 2.0
        );
    }

    #[tokio::test]
    async fn follow_up_frames_are_joined() {
        let mut line = SimLine::new(vec![meter("000000000001", 3.0)]);
        line.max_reply_data = 6;
        let (a, b) = tokio::io::duplex(1024);
        tokio::spawn(async move { line.serve(b).await });
        let mut c = Client::new(a, opts());
        let raw = c
            .read_raw(Address::parse("000000000001").unwrap(), DataId(0x0001_FF00))
            .await
            .unwrap();
        assert_eq!(raw.len(), 20, "total and four tariffs, 4 bytes each");
    }

    #[tokio::test]
    async fn collisions_silence_and_corruption() {
        let m1 = meter("000000000001", 3.0);
        let line = SimLine::new(vec![m1.clone(), meter("000000000002", 5.0)]);
        let faults = line.faults.clone();
        let (a, b) = tokio::io::duplex(1024);
        tokio::spawn(async move { line.serve(b).await });
        let mut c = Client::new(a, opts());
        // Two meters answer the wildcard: the replies collide.
        assert!(c.read_address(Address::WILDCARD).await.is_err());
        // A partial wildcard selects one.
        let got = c
            .read_address(Address::parse("AAAAAAAAAA02").unwrap())
            .await
            .unwrap();
        assert_eq!(got.to_string(), "000000000002");
        m1.set_silent(true);
        let a1 = Address::parse("000000000001").unwrap();
        assert!(matches!(
            c.read_value(a1, DataId(0x0203_0000)).await,
            Err(Dlt645Error::Timeout(_))
        ));
        m1.set_silent(false);
        faults.corrupt_replies.store(1, Ordering::SeqCst);
        assert!(matches!(
            c.read_value(a1, DataId(0x0203_0000)).await,
            Err(Dlt645Error::Corrupt(_))
        ));
        faults.truncate_replies.store(1, Ordering::SeqCst);
        assert!(matches!(
            c.read_value(a1, DataId(0x0203_0000)).await,
            Err(Dlt645Error::Incomplete(_) | Dlt645Error::Timeout(_))
        ));
        assert!(c.read_value(a1, DataId(0x0203_0000)).await.is_ok());
    }
}
