//! A consortium ledger replica (docs/ledger.md) over the pure rules of `gridgate-ledger`:
//! every member appends only to its own log; validators vote at most once per (origin, seq)
//! and 2f+1 votes make an entry final. This crate holds what runs: votes against the store,
//! the node's own log, anti-entropy and the membership in force.
//!
//! - [`node`]: a validator's vote and a pushed certificate, against the store.
//! - [`certifier`]: a node's own log: append claims, collect votes, spread certificates.
//! - [`cuts`]: decided cuts, checked against their finalization and chain, and stored.
//! - [`market`]: the flexibility market's entries read from the logs held, and a
//!   validator's rounds and clearing over the decided cuts.
//! - [`sync`]: anti-entropy: a replica fetches the certified entries it lacks.
//! - [`state`]: what a node's ledger parts share: the membership in force, the feed of
//!   newly stored certified entries.

pub mod certifier;
pub mod cuts;
pub mod market;
pub mod node;
pub mod state;
pub mod sync;
pub mod tables;

use gridgate_proto::v1 as pb;
use thiserror::Error;

use gridgate_ledger::{Member, Members};

use crate::tables::LedgerStore;
use gridgate_config::ledger::LedgerConfig;
use gridgate_ledger::settlement::{Certified, Statement, settle_as_of};
use gridgate_store::Store;

/// A member's key file is unusable.
#[derive(Debug, Error)]
#[error("[ledger] member {member:?}: {source}")]
pub struct MembersError {
    /// The member.
    pub member: String,
    pub source: gridgate_core::IdentityError,
}

/// Every certified entry of `origin`'s log this node's store holds, decoded, in order (read a
/// chunk at a time). Entries that do not decode are left out: what the store holds was
/// checked when it was stored.
pub fn held_entries(
    store: &gridgate_store::Store,
    origin: &str,
) -> Result<Vec<pb::Entry>, gridgate_store::StoreError> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let chunk = store.ledger().range(origin, from, 512)?;
        let Some(last) = chunk.last().map(|c| c.0) else {
            return Ok(out);
        };
        from = last + 1;
        out.extend(chunk.into_iter().filter_map(|(_, bytes)| entry_of(&bytes)));
    }
}

/// The entry a stored `CertifiedEntry` carries, if it decodes (what the store holds was
/// checked when it was stored).
pub(crate) fn entry_of(certified: &[u8]) -> Option<pb::Entry> {
    use prost::Message;
    let c = pb::CertifiedEntry::decode(certified).ok()?;
    pb::Entry::decode(c.entry?.entry.as_slice()).ok()
}

/// Every certified entry of every log this replica holds, as settlement takes them.
pub(crate) fn every_held_entry(
    store: &Store,
) -> Result<Vec<Certified>, gridgate_store::StoreError> {
    let mut entries = Vec::new();
    for (origin, _) in store.ledger().heads()? {
        let held = held_entries(store, &origin)?;
        entries.extend(held.into_iter().map(|entry| Certified { entry }));
    }
    Ok(entries)
}

/// The genesis membership the config lists, with the members' keys read.
pub fn load_members(cfg: &LedgerConfig) -> Result<Members, MembersError> {
    let mut out = Members::default();
    for m in &cfg.members {
        let key =
            gridgate_core::identity::load_public(&m.public_key).map_err(|source| MembersError {
                member: m.id.clone(),
                source,
            })?;
        let role = match m.role.as_str() {
            "validator" => pb::MemberRole::Validator,
            "operator" => pb::MemberRole::Operator,
            "gateway" => pb::MemberRole::Gateway,
            _ => pb::MemberRole::Observer,
        };
        out.0.insert(
            m.id.clone(),
            Member {
                id: m.id.clone(),
                role,
                key,
                removed: false,
            },
        );
    }
    Ok(out)
}

/// Today's (UTC) statement as this replica holds it, provisional until the day closes:
/// settled as of the newest entry held, so that its figures and its hash stay the same until
/// an entry changes them. What the demo's status line and the page's ledger card show.
pub fn today(store: &Store, cfg: &LedgerConfig, now: i64) -> Option<Statement> {
    let members = load_members(cfg).ok()?;
    let entries = every_held_entry(store).ok()?;
    let day = now - now.rem_euclid(DAY_MS);
    let as_of = entries
        .iter()
        .map(|c| c.entry.timestamp_ms + 1)
        .max()
        .unwrap_or(now)
        .min(now);
    Some(settle_as_of(
        day,
        day + DAY_MS,
        as_of,
        &entries,
        &members,
        &cfg.terms,
    ))
}

const DAY_MS: i64 = 86_400_000;

/// A member's reputation now, as the metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// The member.
    pub member: String,
    /// Its reputation score.
    pub score: i64,
    /// Whether it is excluded at `now`.
    pub excluded: bool,
}

/// Every member's standing at `now`: the settlement of every certified entry this replica
/// holds (stored entries were checked when they arrived). Reads every entry, so callers that
/// ask often keep the answer a while.
pub fn standings(store: &Store, cfg: &LedgerConfig, now: i64) -> Vec<Standing> {
    let Ok(members) = load_members(cfg) else {
        return Vec::new();
    };
    let entries = every_held_entry(store).unwrap_or_default();
    settle_as_of(0, now, now, &entries, &members, &cfg.terms)
        .standing
        .iter()
        .map(|(m, st)| Standing {
            member: m.clone(),
            score: st.score,
            excluded: st.excluded_until_ms > now,
        })
        .collect()
}
