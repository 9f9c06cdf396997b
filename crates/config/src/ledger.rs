//! `[ledger]`: this node's part in the consortium ledger (docs/ledger.md): its role, the
//! genesis membership, and the TLS client identity it reaches validators with.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{Checker, valid_name};

/// `[ledger]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLedger {
    pub role: Spanned<String>,
    pub members: Spanned<Vec<RawMember>>,
    pub ca_file: Option<Spanned<String>>,
    pub cert_file: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
    #[serde(default)]
    pub program: Vec<RawTerms>,
    pub commit_batches: Option<Spanned<u64>>,
    pub consensus: Option<RawConsensus>,
}

/// `[ledger.consensus]` as written: a validator's part in the consensus on cuts
/// (`gridgate-node`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsensus {
    pub listen: Spanned<String>,
    pub cut_interval: Option<Spanned<String>>,
    pub max_clock_skew: Option<Spanned<String>>,
}

/// `[[ledger.program]]` as written: a program's settlement terms.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTerms {
    pub name: Spanned<String>,
    pub price_milli_per_kwh: Spanned<i64>,
    pub cap_percent: Option<Spanned<i64>>,
    pub threshold_percent: Option<Spanned<i64>>,
    pub penalty_milli_per_kwh: Option<Spanned<i64>>,
    pub grace: Option<Spanned<String>>,
}

/// One member as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMember {
    pub id: Spanned<String>,
    pub role: Spanned<String>,
    pub public_key: Spanned<String>,
    pub endpoint: Option<Spanned<String>>,
    pub consensus: Option<Spanned<String>>,
}

/// This node's role on the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerRole {
    /// Keeps a replica and its own log (performance claims, batch commitments).
    Gateway,
    /// Stores, checks and votes; serves sync.
    Validator,
    /// The DR operator: a replica and its own log (events and program terms, which
    /// `gridgate ledger publish` appends), like a gateway without devices.
    Operator,
}

impl LedgerRole {
    /// As the config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerRole::Gateway => "gateway",
            LedgerRole::Validator => "validator",
            LedgerRole::Operator => "operator",
        }
    }
}

/// A member of the genesis membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberConfig {
    /// Its id (a gateway's is its `[gateway] id`).
    pub id: String,
    /// `validator`, `operator`, `gateway` or `observer`.
    pub role: String,
    /// Its Ed25519 public key (PEM, as `gridgate keygen` writes it).
    pub public_key: PathBuf,
    /// A validator's gRPC endpoint (`https://host:port`).
    pub endpoint: Option<String>,
    /// A validator's consensus address (`host:port`), where the other validators reach it.
    pub consensus: Option<std::net::SocketAddr>,
}

/// `[ledger.consensus]`: how a validator takes part in the consensus on cuts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsensusConfig {
    /// Where its P2P listener binds.
    pub listen: std::net::SocketAddr,
    /// Least time between two cuts (the leader waits this long after the parent's time).
    pub cut_interval: std::time::Duration,
    /// How far a proposed cut's time may be from this validator's clock.
    pub max_clock_skew: std::time::Duration,
}

/// Least time between cuts when the config does not say.
pub const DEFAULT_CUT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// Largest clock difference a cut's time may show when the config does not say.
pub const DEFAULT_MAX_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(10);

/// `[ledger]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerConfig {
    /// This node's role.
    pub role: LedgerRole,
    /// The genesis membership.
    pub members: Vec<MemberConfig>,
    /// CA of the validators' server certificates.
    pub ca_file: Option<PathBuf>,
    /// This node's client certificate towards validators.
    pub cert_file: Option<PathBuf>,
    /// Its key.
    pub key_file: Option<PathBuf>,
    /// A gateway commits its signed batches in ranges of this many (an RFC 6962 root per
    /// range; 0: no commitments).
    pub commit_batches: u64,
    /// Settlement terms by program (genesis: the same on every node).
    pub terms: std::collections::BTreeMap<String, gridgate_ledger::settlement::Terms>,
    /// A validator's consensus (`gridgate-node`); gateways and operators have none.
    pub consensus: Option<ConsensusConfig>,
}

/// Batches per commitment when the config does not say.
pub const DEFAULT_COMMIT_BATCHES: u64 = 100;

const ROLES: [&str; 4] = ["validator", "operator", "gateway", "observer"];

impl Checker<'_> {
    pub(super) fn check_ledger(
        &mut self,
        raw: Option<&RawLedger>,
        id: &str,
    ) -> Option<LedgerConfig> {
        let r = raw?;
        let role = match r.role.get_ref().as_str() {
            "gateway" => LedgerRole::Gateway,
            "validator" => LedgerRole::Validator,
            "operator" => LedgerRole::Operator,
            other => {
                self.problem(
                    &r.role,
                    "ledger.role".into(),
                    format!("{other:?} is not a node role: write \"gateway\", \"validator\" or \"operator\""),
                );
                LedgerRole::Gateway
            }
        };
        let mut members: Vec<MemberConfig> = Vec::new();
        for (i, m) in r.members.get_ref().iter().enumerate() {
            let mid = m.id.get_ref().trim().to_string();
            if !valid_name(&mid) {
                self.problem(
                    &m.id,
                    format!("ledger.members[{i}].id"),
                    "use letters, digits, '-', '_' or '.'".into(),
                );
            } else if members.iter().any(|x| x.id == mid) {
                self.problem(
                    &m.id,
                    format!("ledger.members[{i}].id"),
                    format!("member {mid:?} is listed twice"),
                );
            }
            let mrole = m.role.get_ref().clone();
            if !ROLES.contains(&mrole.as_str()) {
                self.problem(
                    &m.role,
                    format!("ledger.members[{i}].role"),
                    format!(
                        "{mrole:?} is not a member role: write one of {}",
                        ROLES.join(", ")
                    ),
                );
            }
            let endpoint = m.endpoint.as_ref().map(|e| e.get_ref().clone());
            if mrole == "validator" && role != LedgerRole::Validator && endpoint.is_none() {
                self.problem(
                    &m.id,
                    format!("ledger.members[{i}].endpoint"),
                    "a validator needs its endpoint (https://host:port) for this node to reach it"
                        .into(),
                );
            }
            let consensus = m.consensus.as_ref().and_then(|c| {
                let parsed = c.get_ref().parse().ok();
                if parsed.is_none() {
                    self.problem(
                        c,
                        format!("ledger.members[{i}].consensus"),
                        format!(
                            "{:?} is not an address: write ip:port, e.g. 10.0.0.5:7450",
                            c.get_ref()
                        ),
                    );
                }
                parsed
            });
            members.push(MemberConfig {
                id: mid,
                role: mrole,
                public_key: m.public_key.get_ref().into(),
                endpoint,
                consensus,
            });
        }
        let mine = role.as_str();
        if !members.iter().any(|m| m.id == id && m.role == mine) {
            self.problem(
                &r.members,
                "ledger.members".into(),
                format!("this node ([gateway] id {id:?}) must be a member with role {mine:?}"),
            );
        }
        if !members.iter().any(|m| m.role == "validator") {
            self.problem(
                &r.members,
                "ledger.members".into(),
                "list the validators (3f+1 of them, e.g. 4)".into(),
            );
        }
        let mut terms = std::collections::BTreeMap::new();
        for (i, p) in r.program.iter().enumerate() {
            let d = gridgate_ledger::settlement::Terms::default();
            let pct = |v: &Option<Spanned<i64>>, default: i64| {
                v.as_ref().map_or(default, |v| *v.get_ref())
            };
            let t = gridgate_ledger::settlement::Terms {
                price_milli_per_kwh: *p.price_milli_per_kwh.get_ref(),
                cap_percent: pct(&p.cap_percent, d.cap_percent),
                threshold_percent: pct(&p.threshold_percent, d.threshold_percent),
                penalty_milli_per_kwh: pct(&p.penalty_milli_per_kwh, d.penalty_milli_per_kwh),
                grace_ms: self
                    .duration(
                        &p.grace,
                        format!("ledger.program[{i}].grace"),
                        std::time::Duration::from_millis(d.grace_ms as u64),
                    )
                    .as_millis() as i64,
            };
            if t.price_milli_per_kwh < 0
                || t.penalty_milli_per_kwh < 0
                || !(0..=1000).contains(&t.cap_percent)
                || !(0..=100).contains(&t.threshold_percent)
            {
                self.problem(
                    &p.name,
                    format!("ledger.program[{i}]"),
                    "prices are not negative, cap_percent is 0..=1000 and threshold_percent 0..=100".into(),
                );
            }
            if terms.insert(p.name.get_ref().clone(), t).is_some() {
                self.problem(
                    &p.name,
                    format!("ledger.program[{i}].name"),
                    "listed twice".into(),
                );
            }
        }
        let consensus = r.consensus.as_ref().and_then(|c| {
            if role != LedgerRole::Validator {
                self.problem(
                    &c.listen,
                    "ledger.consensus".into(),
                    "only a validator takes part in consensus: remove [ledger.consensus]".into(),
                );
            }
            let listen = match c.listen.get_ref().parse() {
                Ok(a) => a,
                Err(_) => {
                    self.problem(
                        &c.listen,
                        "ledger.consensus.listen".into(),
                        format!("{:?} is not an address: write ip:port, e.g. 0.0.0.0:7450", c.listen.get_ref()),
                    );
                    return None;
                }
            };
            let missing: Vec<&str> = members
                .iter()
                .filter(|m| m.role == "validator" && m.consensus.is_none())
                .map(|m| m.id.as_str())
                .collect();
            if !missing.is_empty() {
                self.problem(
                    &c.listen,
                    "ledger.members".into(),
                    format!("every validator needs its consensus address (consensus = \"ip:port\"); missing for {}", missing.join(", ")),
                );
            }
            Some(ConsensusConfig {
                listen,
                cut_interval: self.duration(&c.cut_interval, "ledger.consensus.cut_interval".into(), DEFAULT_CUT_INTERVAL),
                max_clock_skew: self.duration(&c.max_clock_skew, "ledger.consensus.max_clock_skew".into(), DEFAULT_MAX_CLOCK_SKEW),
            })
        });
        let path = |v: &Option<Spanned<String>>| v.as_ref().map(|p| PathBuf::from(p.get_ref()));
        Some(LedgerConfig {
            role,
            members,
            ca_file: path(&r.ca_file),
            cert_file: path(&r.cert_file),
            key_file: path(&r.key_file),
            commit_batches: r
                .commit_batches
                .as_ref()
                .map_or(DEFAULT_COMMIT_BATCHES, |v| *v.get_ref()),
            terms,
            consensus,
        })
    }
}
