//! Pieces shared by the simulators: a load that responds to control, a simulated line's
//! timing, and pseudo-terminal pairs that stand in for RS-485 ports.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// A controllable load behind a meter or a Modbus device.
///
/// Power follows the setpoint (percent of rated power) while the load is on, with a slow
/// wobble so that values move; energy integrates power over time.
#[derive(Debug, Clone)]
pub struct LoadModel {
    /// Rated power, kW.
    pub rated_kw: f64,
    /// Setpoint, percent of rated power, 0..=100.
    pub setpoint_pct: f64,
    /// Switch state (false after a trip).
    pub on: bool,
    /// Forward active energy, kWh.
    pub energy_kwh: f64,
    /// Nominal voltage, V.
    pub voltage_v: f64,
    started: Instant,
    last: Instant,
    phase: f64,
}

impl LoadModel {
    /// A load of `rated_kw` at full setpoint with `energy_kwh` on the register.
    pub fn new(rated_kw: f64, energy_kwh: f64, phase: f64) -> Self {
        let now = Instant::now();
        LoadModel {
            rated_kw,
            setpoint_pct: 100.0,
            on: true,
            energy_kwh,
            voltage_v: 220.0,
            started: now,
            last: now,
            phase,
        }
    }

    fn wobble(&self, now: Instant) -> f64 {
        let t = now.duration_since(self.started).as_secs_f64();
        (t / 7.0 + self.phase).sin()
    }

    /// Instantaneous active power now, kW.
    pub fn power_kw(&self, now: Instant) -> f64 {
        if !self.on {
            return 0.0;
        }
        self.rated_kw * self.setpoint_pct / 100.0 * (1.0 + 0.03 * self.wobble(now))
    }

    /// Phase voltage now, V.
    pub fn voltage(&self, now: Instant) -> f64 {
        self.voltage_v + 1.5 * self.wobble(now)
    }

    /// Grid frequency now, Hz.
    pub fn frequency(&self, now: Instant) -> f64 {
        50.0 + 0.02 * self.wobble(now)
    }

    /// Integrates energy up to `now` and returns the model at that time.
    pub fn advance(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.energy_kwh += self.power_kw(now) * dt / 3600.0;
        self.last = now;
    }
}

/// A load shared between a simulator and whoever controls it.
#[derive(Debug, Clone)]
pub struct SharedLoad(Arc<Mutex<LoadModel>>);

impl SharedLoad {
    /// Wraps a model.
    pub fn new(model: LoadModel) -> Self {
        SharedLoad(Arc::new(Mutex::new(model)))
    }

    /// The model, advanced to now. A poisoned lock (a panic elsewhere) still yields the data:
    /// a simulator keeps serving.
    pub fn lock(&self) -> MutexGuard<'_, LoadModel> {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.advance(Instant::now());
        g
    }
}

/// Timing of a simulated serial line: a reply is complete only after the request and the
/// reply have taken their time on the wire at the line's baud rate, plus the device's
/// turnaround.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LineTiming {
    /// Time one byte takes on the wire; zero for an unpaced line.
    pub byte_time: Duration,
    /// Device's delay between the end of a request and its reply (DL/T 645: 20 ms to 500 ms).
    pub turnaround: Duration,
}

impl LineTiming {
    /// No pacing: replies as fast as the host can.
    pub const UNPACED: LineTiming = LineTiming {
        byte_time: Duration::ZERO,
        turnaround: Duration::ZERO,
    };

    /// When a reply of `reply_len` bytes to a request of `request_len` bytes that finished
    /// arriving at `received` is complete at the master.
    pub fn reply_complete_at(
        &self,
        received: Instant,
        request_len: usize,
        reply_len: usize,
    ) -> Instant {
        received
            + self.byte_time * request_len as u32
            + self.turnaround
            + self.byte_time * reply_len as u32
    }
}

/// A pseudo-terminal pair standing in for a serial line: the simulator serves the master
/// side, and a client opens [`Pty::path`] like any `/dev/ttyS*` device.
#[derive(Debug)]
pub struct Pty {
    /// The side the simulator reads and writes.
    pub master: tokio_serial::SerialStream,
    /// The slave side's path and symlink, kept open while the pair lives.
    pub hold: PtyHold,
}

/// The slave side of a [`Pty`], kept open so that the master does not see a hang-up between
/// client sessions; removes the symlink when dropped.
#[derive(Debug)]
pub struct PtyHold {
    _slave: std::fs::File,
    path: PathBuf,
    link: Option<PathBuf>,
}

impl PtyHold {
    /// Path a client opens: the symlink when one was made, else `/dev/pts/N`.
    pub fn path(&self) -> &Path {
        self.link.as_deref().unwrap_or(&self.path)
    }
}

impl Drop for PtyHold {
    fn drop(&mut self) {
        if let Some(l) = &self.link {
            let _ = std::fs::remove_file(l);
        }
    }
}

impl Pty {
    /// Opens a new pair. With `symlink`, a stable path is made to point at the slave side
    /// (replacing an old link there), so that configs can name it.
    pub fn open(symlink: Option<&Path>) -> std::io::Result<Self> {
        use tokio_serial::SerialPort;
        let (master, slave) = tokio_serial::SerialStream::pair()
            .map_err(|e| std::io::Error::other(format!("cannot open a pseudo-terminal: {e}")))?;
        let path = slave
            .name()
            .map(PathBuf::from)
            .ok_or_else(|| std::io::Error::other("pseudo-terminal has no name"))?;
        // Hold the slave side open with a plain file (no flock), and close the serial port
        // `pair()` opened, which holds a lock: a client then opens the slave exclusively,
        // as it would a real port, while the master never sees a hang-up.
        let hold = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)?;
        drop(slave);
        let link = match symlink {
            Some(l) => {
                if let Some(dir) = l.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let _ = std::fs::remove_file(l);
                std::os::unix::fs::symlink(&path, l)?;
                Some(l.to_path_buf())
            }
            None => None,
        };
        Ok(Pty {
            master,
            hold: PtyHold {
                _slave: hold,
                path,
                link,
            },
        })
    }

    /// Path a client opens: the symlink when one was made, else `/dev/pts/N`.
    pub fn path(&self) -> &Path {
        self.hold.path()
    }
}

/// Seconds since the Unix epoch, for meters' clocks.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
