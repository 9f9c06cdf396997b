//! What the gateway's parts ask of a bus task or of the MQTT commander, and what they
//! answer: the requests, a confirmed write, and why a write or read did not happen.

use std::time::Duration;

use gridgate_config::{MqttControl, RemoteAuth};
use thiserror::Error;
use tokio::sync::oneshot;

/// Requests a bus task may have waiting.
pub const CONTROL_QUEUE: usize = 64;

/// A write asked of the bus that owns the device's line.
#[derive(Debug)]
pub struct ControlRequest {
    /// Device name.
    pub device: String,
    /// Point name (a holding register or coil point of the device).
    pub point: String,
    /// Engineering value to write (coils and DL/T 645 relays: 0 off, 1 on).
    pub value: f64,
    /// DL/T 645 remote-control credentials, for a meter's relay.
    pub auth: Option<RemoteAuth>,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<ControlOutcome, ControlError>>,
}

/// A one-off poll of a device (a field engineer's test read), done by its bus task between
/// polls like a write; the readings are stored like any poll's.
#[derive(Debug)]
pub struct PollRequest {
    /// Device name.
    pub device: String,
    /// Where the readings go.
    pub reply: oneshot::Sender<Result<Vec<gridgate_core::Reading>, ControlError>>,
}

/// A scan of a bus's line for what answers on it (`gridgate scan` from the page): the bus
/// task closes its own connection and its polls wait until the scan ends, so that the scan
/// never talks over them.
#[derive(Debug)]
pub struct ScanRequest {
    /// Modbus unit ids to probe (DL/T 645 lines search every address).
    pub units: std::ops::RangeInclusive<u8>,
    /// What was found.
    pub reply: oneshot::Sender<Result<ScanFound, ControlError>>,
}

/// What a scan found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScanFound {
    /// One line per meter or unit found.
    pub found: Vec<String>,
    /// A config snippet for them, as `gridgate scan` prints it.
    pub snippet: String,
}

/// A control point to read now, before a write that is about to follow (a DR event being
/// stored): the write takes this value as the one to restore instead of reading it again,
/// so that the read overlaps the store's fsync. Nothing answers.
#[derive(Debug)]
pub struct ReadAheadRequest {
    /// Device name.
    pub device: String,
    /// Point name.
    pub point: String,
}

/// What a bus task is asked to do between its polls.
#[derive(Debug)]
pub enum BusRequest {
    /// Write a control point.
    Write(ControlRequest),
    /// Read a control point ahead of its write.
    ReadAhead(ReadAheadRequest),
    /// Poll a device now.
    Poll(PollRequest),
    /// Scan the line.
    Scan(ScanRequest),
}

/// A confirmed write.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ControlOutcome {
    /// The value before the write.
    pub previous: f64,
    /// The value read back after it.
    pub confirmed: f64,
}

/// Why a write did not happen or was not confirmed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ControlError {
    /// No such device or point in the config in force.
    #[error("no point {0} to write")]
    Unknown(String),
    /// The point cannot be written (input registers, discrete inputs, DL/T 645 points).
    #[error("{0} is not writable: {1}")]
    NotWritable(String, &'static str),
    /// The device did not take it.
    #[error("{point}: {error}")]
    Device {
        point: String,
        /// What the device or line said.
        error: String,
    },
    /// Written, but the read-back shows another value.
    #[error("{point}: wrote {wrote}, the device shows {read}")]
    NotConfirmed {
        point: String,
        /// Value written.
        wrote: f64,
        /// Value read back.
        read: f64,
        /// The value before the write, where it was read: what the end of the event puts
        /// back, since the write may have moved the load all the same.
        previous: Option<f64>,
    },
    /// The write was sent but went wrong after that (no reply to it, or no read-back): the
    /// load may have moved.
    #[error("{point}: {error}")]
    AfterWrite {
        point: String,
        /// What the device or line said.
        error: String,
        /// The value before the write.
        previous: f64,
    },
    /// The bus task is gone (stopping, or reloading).
    #[error("bus for {0} is not running")]
    BusGone(String),
    /// No confirmation in time (the line is busy with a device that does not answer, or
    /// the device is slow).
    #[error("{0}: not confirmed within {1:?}")]
    Timeout(String, Duration),
}

impl ControlError {
    /// The control's value before a write that may have moved it, where one was read.
    pub fn previous(&self) -> Option<f64> {
        match self {
            ControlError::NotConfirmed { previous, .. } => *previous,
            ControlError::AfterWrite { previous, .. } => Some(*previous),
            _ => None,
        }
    }
}

/// One command to send.
#[derive(Debug)]
pub struct CommandRequest {
    /// The load's topics and timeout.
    pub control: MqttControl,
    /// The value to command.
    pub value: f64,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<ControlOutcome, ControlError>>,
}
