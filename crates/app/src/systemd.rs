//! systemd integration (`Type=notify`): READY once the store is open and checked and the
//! pipeline has started, STATUS lines, STOPPING on shutdown, and a watchdog fed only while
//! the pipeline makes progress, so that a wedged gateway is restarted rather than left
//! silently stuck. Without `NOTIFY_SOCKET` (not under systemd) all of this does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use gridgate_acquire::DeviceRegistry;
use gridgate_store::writer::{StoreHandle, Stored, Submission};

fn send(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(states) {
            debug!("sd_notify failed: {e}");
        }
    }
}

/// Tells systemd the gateway is up.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A status line for `systemctl status`.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Tells systemd the gateway is reloading its config (READY follows when it is done).
/// MONOTONIC_USEC lets `Type=notify-reload` (systemd 253+) match the two.
pub fn reloading() {
    let mut states = vec![
        NotifyState::Reloading,
        NotifyState::Status("reloading the config"),
    ];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// Tells systemd the gateway is stopping.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: closing the last batch"),
    ]);
}

/// Is the store writer turning? An empty submission must be answered in time.
async fn store_alive(store: &StoreHandle, within: Duration) -> bool {
    let (done, rx) = oneshot::channel();
    let probe = Submission {
        readings: Default::default(),
        dedupe: false,
        done: Some(done),
    };
    let answered = async {
        store.tx.send(probe).await.ok()?;
        rx.await.ok()
    };
    matches!(
        tokio::time::timeout(within, answered).await,
        Ok(Some(Stored::Committed))
    )
}

/// Feeds systemd's watchdog (when `WatchdogSec=` is set) only while the store commits and,
/// if the gateway polls buses, polls keep happening within `poll_grace`.
pub async fn watchdog(
    store: StoreHandle,
    registry: DeviceRegistry,
    polls_expected: bool,
    poll_grace: Duration,
    cancel: CancellationToken,
) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = period / 3;
    let mut last_polls = 0u64;
    let mut last_progress = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let polls: u64 = registry.snapshot().values().map(|s| s.polls).sum();
        if polls != last_polls {
            last_polls = polls;
            last_progress = Instant::now();
        }
        let acquiring = !polls_expected || last_progress.elapsed() <= poll_grace;
        let storing = store_alive(&store, every).await;
        if acquiring && storing {
            send(&[NotifyState::Watchdog]);
        } else {
            warn!(
                acquiring,
                storing,
                "pipeline not making progress: not feeding the systemd watchdog (systemd will restart the gateway)"
            );
        }
    }
}
