//! Acquisition: buses, polling, device state. One task per bus owns its line; each device is
//! polled on its own schedule; every outcome, good or bad, becomes a
//! [`gridgate_core::Reading`]. Controls write through the bus task that owns the
//! line, or to a field device over MQTT. Acquisition knows no store: readings leave through
//! a channel.

pub mod broker;
pub mod bus;
pub mod control;
pub mod device;
pub mod mqtt_command;
pub mod request;
pub mod scan;
pub mod sink;
pub mod state;

pub use bus::BusPoller;
pub use control::Controls;
pub use request::{ControlError, ControlOutcome};
pub use sink::{JsonLinesSink, ReadingSink, TextSink};
pub use state::{DeviceRegistry, DeviceStatus};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use gridgate_config::GatewayConfig;
use gridgate_core::Reading;

/// Readings waiting between the buses and the sink; a slow sink slows polling rather than
/// growing memory.
pub const QUEUE_DEPTH: usize = 1024;

/// Starts one poller per bus. Readings go to `out`; the pollers stop when `cancel` fires.
pub fn start(
    cfg: &GatewayConfig,
    out: mpsc::Sender<Vec<Reading>>,
    registry: DeviceRegistry,
    cancel: CancellationToken,
) -> JoinSet<()> {
    let mut set = JoinSet::new();
    for bus in &cfg.buses {
        let poller = BusPoller::new(bus.clone(), registry.clone());
        set.spawn(poller.run(out.clone(), cancel.clone()));
    }
    set
}
