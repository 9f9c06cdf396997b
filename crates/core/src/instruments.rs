//! Instruments updated where things happen (DR acknowledgements, the page's actions,
//! listeners' connections); the exporter reads them at scrape time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// Label pairs.
pub type Labels = Vec<(String, String)>;

pub fn labels<const N: usize>(pairs: [(&str, &str); N]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Metrics updated where things happen.
#[derive(Debug)]
pub struct Instruments {
    /// Time from a DR event's due moment to the load's confirmed write, by load.
    pub dr_ack_latency: Family<Labels, Histogram, fn() -> Histogram>,
    /// Write actions on the page, by action and outcome.
    pub web_actions: Family<Labels, Counter>,
    /// Requests refused for want of a credential, by what was asked.
    pub web_refused: Family<Labels, Counter>,
    /// Every listener's connection cap and counters.
    pub listeners: crate::admission::Listeners,
    /// A validator's consensus on cuts (`gridgate-node` updates it; zero elsewhere).
    pub consensus: Consensus,
}

impl Default for Instruments {
    fn default() -> Self {
        Instruments {
            dr_ack_latency: Family::new_with_constructor(latency_histogram),
            web_actions: Family::default(),
            web_refused: Family::default(),
            listeners: Default::default(),
            consensus: Default::default(),
        }
    }
}

impl Instruments {
    /// A DR load was confirmed at its target `latency_ms` after it was due.
    pub fn dr_acknowledged(&self, load: &str, latency_ms: i64) {
        self.dr_ack_latency
            .get_or_create(&labels([("load", load)]))
            .observe(latency_ms.max(0) as f64 / 1000.0);
    }

    /// A write action on the page ended with `outcome`.
    pub fn action(&self, action: &str, outcome: &str) {
        self.web_actions
            .get_or_create(&labels([("action", action), ("outcome", outcome)]))
            .inc();
    }

    /// A request was refused.
    pub fn refused(&self, what: &str) {
        self.web_refused
            .get_or_create(&labels([("what", what)]))
            .inc();
    }
}

/// Finality samples a validator keeps (its last this many cuts).
pub const FINALITY_SAMPLES: usize = 100_000;

/// What a validator's consensus thread shows the rest of the node (status line, metrics).
#[derive(Debug, Default)]
pub struct Consensus {
    /// Set once consensus runs in this process.
    pub active: AtomicBool,
    /// Height of the newest decided cut stored.
    pub decided_height: AtomicU64,
    /// Newest view the engine reported activity for.
    pub view: AtomicU64,
    /// From the newest finalized cut's proposal to its storing here (ms).
    pub finality_ms: AtomicU64,
    /// Views nullified (no cut: a leader down or a proposal no one could check).
    pub nullified: AtomicU64,
    /// Proposed cuts this validator refused to vote for (a rule broken).
    pub refused: AtomicU64,
    /// Other validators heard from over the consensus transport in the last 30 s.
    pub peers: AtomicU64,
    /// Each finalized cut's finality (ms), the newest [`FINALITY_SAMPLES`].
    pub samples: std::sync::Mutex<std::collections::VecDeque<u32>>,
}

impl Consensus {
    /// Records a cut finalized `ms` after it was proposed.
    pub fn finalized(&self, ms: u64) {
        self.finality_ms.store(ms, Ordering::Relaxed);
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.len() >= FINALITY_SAMPLES {
            s.pop_front();
        }
        s.push_back(ms.min(u64::from(u32::MAX)) as u32);
    }

    /// The `q` quantile (0..=1) of the finality samples, ms.
    pub fn finality_quantile(&self, q: f64) -> Option<u32> {
        let mut v: Vec<u32> = self
            .samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let i = ((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        v.get(i).copied()
    }

    /// One line for the log and systemd.
    pub fn line(&self) -> String {
        format!(
            "consensus: decided height {}, view {}, finality {} ms, {} peer(s) heard, {} nullified, {} refused",
            self.decided_height.load(Ordering::Relaxed),
            self.view.load(Ordering::Relaxed),
            self.finality_ms.load(Ordering::Relaxed),
            self.peers.load(Ordering::Relaxed),
            self.nullified.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}
