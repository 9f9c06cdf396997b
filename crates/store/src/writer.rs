//! The store's writer: one task that takes readings from every source, commits them in
//! groups (one fsync per group, never one per reading), closes batches on count or age, and
//! only then tells each source its readings are safe.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, error, warn};

use super::{Store, StoreError};
use crate::batch::{Framed, seal_framed};
use gridgate_core::Identity;
use gridgate_core::reading::now_ms;

/// What the writer tells a source about its readings: only [`Stored::Committed`] lets the
/// source acknowledge them to whoever sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// On disk: the commit that holds them is durable (fsync).
    Committed,
    /// The writer stopped before it answered (shutdown, or a reload that replaced it): they
    /// may or may not be on disk, so the sender must send them again.
    WriterStopped,
    /// The commit failed, with why (a full disk, an I/O error): nothing of them is on disk.
    Failed(String),
}

impl Stored {
    /// Whether the readings are on disk.
    pub fn is_committed(&self) -> bool {
        *self == Stored::Committed
    }

    /// The answer a reply channel gave: a dropped sender is a stopped writer.
    pub fn from_reply(reply: Result<Stored, oneshot::error::RecvError>) -> Stored {
        reply.unwrap_or(Stored::WriterStopped)
    }
}

impl std::fmt::Display for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stored::Committed => f.write_str("stored"),
            Stored::WriterStopped => f.write_str("store writer stopped"),
            Stored::Failed(why) => write!(f, "store commit failed: {why}"),
        }
    }
}

/// Readings handed to the writer; `done` hears once they are on disk.
#[derive(Debug)]
pub struct Submission {
    /// The readings, shared with the live channel.
    pub readings: gridgate_core::LiveReadings,
    /// They carry the device's own timestamps: drop any not newer than the last stored for
    /// its point (a redelivered message).
    pub dedupe: bool,
    /// Told once the readings are committed, or why not.
    pub done: Option<oneshot::Sender<Stored>>,
}

/// How the writer groups and closes.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Gateway id written into each batch.
    pub gateway_id: String,
    /// Close a batch once this many readings are waiting (flat out, a batch holds up to
    /// twice as many: one commit, one fsync, for two batches' worth).
    pub batch_readings: usize,
    /// Close a batch once its first reading has waited this long.
    pub batch_interval: Duration,
    /// Disk budget, bytes.
    pub budget: u64,
    /// Consumers whose acknowledgement retention waits for.
    pub required_consumers: Vec<String>,
}

/// A handle to give readings to the writer and to watch the chain's head.
#[derive(Debug, Clone)]
pub struct StoreHandle {
    /// Where submissions go.
    pub tx: mpsc::Sender<Submission>,
    /// Next batch sequence (changes when a batch closes).
    pub head: watch::Receiver<u64>,
    /// The store, for readers (uplink, API).
    pub store: Arc<Store>,
    /// Readings committed since start.
    pub committed: Arc<std::sync::atomic::AtomicU64>,
    /// Redelivered readings dropped since start, and of those the ones whose value differed
    /// from the one stored for that point and time.
    pub redelivered: Arc<Redelivered>,
    /// Whether commits succeed.
    pub health: Arc<Health>,
}

/// Whether the store takes commits, for the status, the watchdog's log and `/metrics`.
#[derive(Debug)]
pub struct Health {
    /// The last commit succeeded.
    pub writable: std::sync::atomic::AtomicBool,
    /// Commits that failed since start.
    pub failed_commits: std::sync::atomic::AtomicU64,
    /// Commits that succeeded since start: one serves every submission waiting when it
    /// began (group commit, one fsync for many sources).
    pub commits: std::sync::atomic::AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            writable: std::sync::atomic::AtomicBool::new(true),
            failed_commits: std::sync::atomic::AtomicU64::new(0),
            commits: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// A stretch of failed commits: logged at its start, summed up at most once a minute while
/// it lasts, and its end said once (a full disk made 5 ERROR lines a second).
#[derive(Debug, Default)]
struct Failing {
    since: Option<Instant>,
    failed: u64,
    last_said: Option<Instant>,
}

/// How often a stretch of failed commits is summed up in the log.
const FAILING_SAID_EVERY: Duration = Duration::from_secs(60);

/// Readings dropped as already stored.
#[derive(Debug, Default)]
pub struct Redelivered {
    /// The same point and device time as a reading stored before.
    pub dropped: std::sync::atomic::AtomicU64,
    /// Of those, a different value than the one stored.
    pub conflicting: std::sync::atomic::AtomicU64,
    /// Devices already warned about (once each, the counter has the rest).
    warned: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl Redelivered {
    fn note(&self, c: &super::Committed) {
        use std::sync::atomic::Ordering::Relaxed;
        self.dropped.fetch_add(c.duplicates as u64, Relaxed);
        self.conflicting
            .fetch_add(c.conflicting.len() as u64, Relaxed);
        if c.conflicting.is_empty() {
            return;
        }
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        for point in &c.conflicting {
            let device = point.split('/').next().unwrap_or(point);
            if warned.insert(device.to_string()) {
                warn!(device, point = %point, "a reading repeats the time of one already stored with another value; the first is kept (a device clock gone back, or timestamps reused?); further ones are only counted (gridgate_readings_conflicting_total)");
            }
        }
    }
}

impl StoreHandle {
    /// Stores `readings` and waits until they are on disk.
    pub async fn store_durably(&self, readings: Vec<gridgate_core::Reading>) -> Stored {
        let (done, rx) = oneshot::channel();
        let sub = Submission {
            readings: Arc::new(readings),
            dedupe: false,
            done: Some(done),
        };
        if self.tx.send(sub).await.is_err() {
            return Stored::WriterStopped;
        }
        Stored::from_reply(rx.await)
    }
}

/// Submissions queued for the writer. Small on purpose: a submission can hold a whole MQTT
/// message's readings, and a full queue is backpressure (MQTT messages wait at the broker,
/// unacknowledged), not memory growth.
pub const QUEUE: usize = 64;

/// How long readings nobody waits on wait for more before a commit that would not close a
/// batch: polled readings are acknowledged to no one, and a few milliseconds at the
/// source cost nothing while each commit costs an fsync.
const GATHER: Duration = Duration::from_millis(3);

/// Starts the writer on `store`. It runs until every sender (every clone of the handle's
/// `tx`) is gone, committing what is left first.
pub fn start(
    store: Store,
    identity: Identity,
    cfg: WriterConfig,
) -> Result<(StoreHandle, tokio::task::JoinHandle<()>), StoreError> {
    let store = Arc::new(store);
    let stats = store.stats()?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let (head_tx, head) = watch::channel(stats.next_seq);
    let committed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let redelivered = Arc::new(Redelivered::default());
    let health = Arc::new(Health::default());
    let task = tokio::spawn(run(
        store.clone(),
        identity,
        cfg,
        rx,
        head_tx,
        stats.open_readings as usize,
        (committed.clone(), redelivered.clone(), health.clone()),
    ));
    Ok((
        StoreHandle {
            tx,
            head,
            store,
            committed,
            redelivered,
            health,
        },
        task,
    ))
}

async fn run(
    store: Arc<Store>,
    identity: Identity,
    cfg: WriterConfig,
    mut rx: mpsc::Receiver<Submission>,
    head: watch::Sender<u64>,
    mut open: usize,
    (committed, redelivered, health): (
        Arc<std::sync::atomic::AtomicU64>,
        Arc<Redelivered>,
        Arc<Health>,
    ),
) {
    let mut failing = Failing::default();
    // A commit takes up to two batches' worth, less what is open: flat out, a commit of one
    // batch's worth spent much of its time in its fsync, and the batch it closes is still
    // no larger than before (what was open, under a batch, and a batch's worth besides).
    let batch_max = cfg.batch_readings.max(1).saturating_mul(2);
    let mut open_since = (open > 0).then(Instant::now);
    let mut closing = false;
    loop {
        let mut group: Vec<Submission> = Vec::new();
        let deadline = open_since.map(|t| t + cfg.batch_interval);
        tokio::select! {
            s = rx.recv() => match s {
                Some(s) => group.push(s),
                None => closing = true,
            },
            _ = sleep_until_opt(deadline) => {}
        }
        let mut n: usize = group.iter().map(|s| s.readings.len()).sum();
        let group_max = batch_max.saturating_sub(open).max(1);
        while n < group_max {
            match rx.try_recv() {
                Ok(s) => {
                    n += s.readings.len();
                    group.push(s);
                }
                Err(_) => break,
            }
        }
        // Readings nobody waits on (polls) that would not close a batch wait a moment for
        // more: flat out, a commit per handful of polls paid an fsync each and a pass
        // through the open-readings table for what a batch's own commit seals directly.
        if n > 0 && open + n < cfg.batch_readings && group.iter().all(|s| s.done.is_none()) {
            let until = tokio::time::Instant::now() + GATHER;
            while n < group_max {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(s)) => {
                        n += s.readings.len();
                        // A source waiting for its commit ends the gathering.
                        let waited_on = s.done.is_some();
                        group.push(s);
                        if waited_on {
                            break;
                        }
                    }
                    Ok(None) => {
                        closing = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        let due = open_since.is_some_and(|t| t.elapsed() >= cfg.batch_interval);
        let close = open + n >= cfg.batch_readings || due || (closing && open + n > 0);
        if n == 0 && !close {
            // Nothing to write (an empty submission is the watchdog's liveness probe):
            // answer it, so the prober knows the writer is turning.
            for s in group {
                if let Some(done) = s.done {
                    let _ = done.send(Stored::Committed);
                }
            }
            if closing {
                break;
            }
            continue;
        }
        let dedupe: Vec<bool> = if group.iter().any(|s| s.dedupe) {
            group
                .iter()
                .flat_map(|s| std::iter::repeat_n(s.dedupe, s.readings.len()))
                .collect()
        } else {
            Vec::new()
        };
        let parts: Vec<gridgate_core::LiveReadings> = group
            .iter_mut()
            .map(|s| std::mem::take(&mut s.readings))
            .collect();
        let st = store.clone();
        let id = identity.clone();
        let gw = cfg.gateway_id.clone();
        let result = tokio::task::spawn_blocking(move || {
            // A disk that stops answering, for the watchdog test.
            fail::fail_point!("store-commit");
            let sealer = move |seq: u64, prev: [u8; 32], rs: &Framed| {
                seal_framed(&id, &gw, seq, prev, now_ms(), rs)
            };
            st.commit(
                parts.iter().flat_map(|p| p.iter()),
                &dedupe,
                close.then_some(&sealer as crate::Sealer<'_>),
            )
        })
        .await;
        let outcome = match result {
            Ok(Ok(c)) => {
                committed.fetch_add(c.appended as u64, std::sync::atomic::Ordering::Relaxed);
                if c.duplicates > 0 {
                    debug!(duplicates = c.duplicates, "redelivered readings dropped");
                    redelivered.note(&c);
                }
                match c.closed {
                    Some((seq, count)) => {
                        debug!(seq, readings = count, "batch closed");
                        open = 0;
                        open_since = None;
                        head.send_replace(seq + 1);
                    }
                    None => {
                        open += c.appended;
                        if open > 0 && open_since.is_none() {
                            open_since = Some(Instant::now());
                        }
                    }
                }
                Ok(())
            }
            Ok(Err(e)) => {
                if Store::needs_reopen(&e) {
                    let st = store.clone();
                    match tokio::task::spawn_blocking(move || st.reopen()).await {
                        Ok(Ok(())) => debug!("store reopened after an I/O error"),
                        Ok(Err(again)) => debug!("store not reopened yet: {again}"),
                        Err(j) => debug!("store reopen task failed: {j}"),
                    }
                }
                Err(e.to_string())
            }
            Err(e) => Err(format!("store writer task failed: {e}")),
        };
        use std::sync::atomic::Ordering::Relaxed;
        match &outcome {
            Err(e) => {
                health.writable.store(false, Relaxed);
                health.failed_commits.fetch_add(1, Relaxed);
                let now = Instant::now();
                failing.failed += 1;
                if failing.since.is_none() {
                    failing.since = Some(now);
                    failing.last_said = Some(now);
                    error!(
                        "store commit failed, readings not acknowledged (sources will resend); retrying, and reopening the store after an I/O error: {e}"
                    );
                } else if failing
                    .last_said
                    .is_some_and(|t| now - t >= FAILING_SAID_EVERY)
                {
                    failing.last_said = Some(now);
                    error!(
                        failed_commits = failing.failed,
                        "store still refuses commits (a full disk? free space, the gateway resumes by itself): {e}"
                    );
                }
            }
            Ok(()) => {
                if let Some(since) = failing.since.take() {
                    warn!(failed_commits = failing.failed, after = ?since.elapsed(), "store takes commits again; acknowledging resumes");
                    failing = Failing::default();
                }
                health.writable.store(true, Relaxed);
                health.commits.fetch_add(1, Relaxed);
            }
        }
        let told = match &outcome {
            Ok(()) => Stored::Committed,
            Err(why) => Stored::Failed(why.clone()),
        };
        for s in group {
            if let Some(done) = s.done {
                let _ = done.send(told.clone());
            }
        }
        if outcome.is_ok() && open == 0 {
            let st = store.clone();
            let required = cfg.required_consumers.clone();
            let budget = cfg.budget;
            if let Ok(Err(e)) =
                tokio::task::spawn_blocking(move || st.prune(&required, budget)).await
            {
                error!("store prune failed: {e}");
            }
        }
        if outcome.is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if closing && (open == 0 || outcome.is_err()) {
            break;
        }
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridgate_core::reading::Value;
    use gridgate_proto::v1 as pb;
    use prost::Message;
    use std::sync::atomic::Ordering::Relaxed;

    fn writer(dir: &std::path::Path) -> (StoreHandle, tokio::task::JoinHandle<()>) {
        let store = Store::open(dir, "gw-1").unwrap();
        let cfg = WriterConfig {
            gateway_id: "gw-1".into(),
            batch_readings: 50,
            batch_interval: Duration::from_secs(3600),
            budget: 1 << 30,
            required_consumers: Vec::new(),
        };
        start(store, Identity::generate().unwrap(), cfg).unwrap()
    }

    fn reading(i: i64) -> gridgate_core::Reading {
        gridgate_core::Reading::good(format!("m/p{i}"), i, Value::Number(i as f64), "")
    }

    /// Two hundred sources submit at once: each is told Committed, far fewer commits than
    /// submissions were made (one fsync serves every submission waiting), and every reading
    /// is in the store, in closed batches of 50 to 100 (two batches' worth a commit).
    #[tokio::test]
    async fn waiting_submissions_share_a_commit_and_each_hears_it() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, _task) = writer(dir.path());
        let mut answers = Vec::new();
        for i in 0..200 {
            let (done, rx) = oneshot::channel();
            let sub = Submission {
                readings: Arc::new(vec![reading(i)]),
                dedupe: false,
                done: Some(done),
            };
            handle.tx.send(sub).await.unwrap();
            answers.push(rx);
        }
        for rx in answers {
            assert_eq!(Stored::from_reply(rx.await), Stored::Committed);
        }
        let commits = handle.health.commits.load(Relaxed);
        assert!(commits <= 20, "{commits} commits for 200 submissions");
        assert_eq!(handle.committed.load(Relaxed), 200);
        let stats = handle.store.stats().unwrap();
        let sizes: Vec<usize> = handle
            .store
            .batches_from(0, 100)
            .unwrap()
            .iter()
            .map(|(_, bytes)| {
                let signed = pb::SignedBatch::decode(bytes.as_slice()).unwrap();
                pb::Batch::decode(signed.batch.as_slice())
                    .unwrap()
                    .readings
                    .len()
            })
            .collect();
        assert!(sizes.iter().all(|n| (50..=100).contains(n)), "{sizes:?}");
        assert_eq!(
            sizes.iter().sum::<usize>() + stats.open_readings as usize,
            200,
            "{sizes:?}"
        );
        assert!(stats.open_readings < 50, "{}", stats.open_readings);
    }

    /// A source whose writer is gone is told so, never Committed.
    #[tokio::test]
    async fn a_stopped_writer_is_told_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, task) = writer(dir.path());
        assert_eq!(
            handle.store_durably(vec![reading(1)]).await,
            Stored::Committed
        );
        task.abort();
        let _ = task.await;
        assert_eq!(
            handle.store_durably(vec![reading(2)]).await,
            Stored::WriterStopped
        );
    }
}
