//! The one path polled readings take to the store: a copy to the live channel and the echo,
//! the readings to the writer.

use std::time::Duration;

use tokio::sync::mpsc;
use tracing::warn;

use gridgate_acquire::ReadingSink;
use gridgate_core::Reading;
use gridgate_store::writer::{StoreHandle, Submission};

/// Hands polled readings to the store, and a copy to `echo`.
///
/// The echo is a convenience (a terminal, a pipe to a tool) and must never hold up the
/// store: it runs on its own thread behind a bounded queue, and when that queue is full
/// (nobody reads the pipe) copies are dropped and counted, not waited for.
pub(crate) async fn forward(
    mut rx: mpsc::Receiver<Vec<Reading>>,
    store: StoreHandle,
    echo: Option<Box<dyn ReadingSink>>,
    live: tokio::sync::broadcast::Sender<gridgate_core::LiveReadings>,
) -> std::io::Result<()> {
    let (echo_tx, echo_done) = match echo {
        Some(mut sink) => {
            let (tx, erx) = std::sync::mpsc::sync_channel::<Vec<Reading>>(1024);
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name("echo".into())
                .spawn(move || {
                    let mut result = Ok(());
                    while let Ok(group) = erx.recv() {
                        if let Err(e) = sink.write(&group) {
                            result = Err(e);
                            break;
                        }
                    }
                    let _ = done_tx.send(result);
                })?;
            (Some(tx), Some(done_rx))
        }
        None => (None, None),
    };
    let mut dropped: u64 = 0;
    while let Some(group) = rx.recv().await {
        if let Some(tx) = &echo_tx {
            match tx.try_send(group.clone()) {
                Ok(()) => {}
                Err(std::sync::mpsc::TrySendError::Full(_)) => {
                    dropped += group.len() as u64;
                    if dropped.is_power_of_two() {
                        warn!(
                            dropped,
                            "echo output is not being read; echo copies dropped (stored readings are not affected)"
                        );
                    }
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {}
            }
        }
        let readings = gridgate_core::publish(group, &live);
        let sub = Submission {
            readings,
            dedupe: false,
            done: None,
        };
        if store.tx.send(sub).await.is_err() {
            break;
        }
    }
    drop(echo_tx);
    let Some(done) = echo_done else {
        return Ok(());
    };
    // Wait for the echo to finish writing, but never for a pipe nobody reads.
    match tokio::time::timeout(Duration::from_secs(2), done).await {
        Ok(Ok(Err(e))) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(()),
    }
}
