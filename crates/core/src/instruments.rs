//! Instruments updated where things happen (DR acknowledgements, the page's actions,
//! listeners' connections); the exporter reads them at scrape time.

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
}

impl Default for Instruments {
    fn default() -> Self {
        Instruments {
            dr_ack_latency: Family::new_with_constructor(latency_histogram),
            web_actions: Family::default(),
            web_refused: Family::default(),
            listeners: Default::default(),
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
