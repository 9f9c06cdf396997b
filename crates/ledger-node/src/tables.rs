//! The ledger replica's tables: certified entries by (origin, seq), entries waiting for their
//! certificate, the votes this node cast (its durable promise never to vote twice at one
//! place), and the origins it shut out with their proofs. Each change is one transaction
//! with an fsync, before any answer leaves the node.

use gridgate_proto::v1 as pb;
use prost::Message;
use redb::{ReadableTable, TableDefinition};

use gridgate_store::{Store, StoreError, read_table};

/// (origin, seq) → encoded `CertifiedEntry`.
const CERTIFIED: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("ledger_certified");
/// (origin, seq) → encoded `SignedEntry` not yet certified (this node's own, or one it voted
/// for).
const PENDING: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("ledger_pending");
/// (origin, seq) → SHA-256 of the entry this node voted for.
const VOTED: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("ledger_voted");
/// Origin → encoded `EquivocationProof`.
const SHUT_OUT: TableDefinition<&str, &[u8]> = TableDefinition::new("ledger_shut_out");
/// Claim key (what an own entry is about, e.g. an event) → its sequence number, so that an
/// entry is appended once however often the caller asks.
const CLAIMS: TableDefinition<&str, u64> = TableDefinition::new("ledger_claims");

/// Height → encoded `DecidedCut`: the chain of decided cuts (docs/ledger.md, Consensus).
const CUTS: TableDefinition<u64, &[u8]> = TableDefinition::new("ledger_cuts");
/// Origin → its head as of the newest decided cut: next (8 bytes BE), the hash of the entry
/// at next - 1 (32) and the height of the cut that moved it (8 BE). Kept with each decided
/// cut, in the same transaction, so the fold is never recomputed from the first cut.
const CUT_HEADS: TableDefinition<&str, &[u8]> = TableDefinition::new("ledger_cut_heads");
/// (origin, next) of each head a decided cut names → (the cut's height, the origin's next
/// before it): which entries each cut ordered, and which cut ordered an entry, without
/// folding the chain again (the market's rounds count answers by the cut that ordered them).
const CUT_ORDERS: TableDefinition<(&str, u64), (u64, u64)> =
    TableDefinition::new("ledger_cut_orders");

/// What a vote request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoteLock {
    /// First vote at this place: recorded.
    Fresh,
    /// Voted for this very entry before.
    Again,
    /// Voted for another entry here: the stored one (encoded `SignedEntry`).
    Other(Vec<u8>),
}

fn next_in(
    t: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    origin: &str,
) -> Result<u64, StoreError> {
    let last = t
        .range((origin, 0)..=(origin, u64::MAX))
        .map_err(StoreError::db)?
        .next_back()
        .transpose()
        .map_err(StoreError::db)?;
    Ok(last.map_or(0, |(k, _)| k.value().1 + 1))
}

/// The ledger's tables, as a node keeps them: certified entries by origin, the votes it cast,
/// its own log's pending entries and claims, the members it shut out.
pub struct LedgerTables<'a>(&'a Store);

/// The ledger node keeps its tables in the gateway's store: `store.ledger()`.
pub trait LedgerStore {
    /// The ledger's tables.
    fn ledger(&self) -> LedgerTables<'_>;
}

impl LedgerStore for Store {
    fn ledger(&self) -> LedgerTables<'_> {
        LedgerTables(self)
    }
}

impl LedgerTables<'_> {
    /// The next sequence number of `origin` this node has no certified entry for.
    pub fn next_certified(&self, origin: &str) -> Result<u64, StoreError> {
        let txn = self.0.begin_read()?;
        match read_table(&txn, CERTIFIED)? {
            Some(t) => next_in(&t, origin),
            None => Ok(0),
        }
    }

    /// A certified entry.
    pub fn certified(&self, origin: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.0.begin_read()?;
        let Some(t) = read_table(&txn, CERTIFIED)? else {
            return Ok(Default::default());
        };
        Ok(t.get((origin, seq))
            .map_err(StoreError::db)?
            .map(|v| v.value().to_vec()))
    }

    /// Up to `max` certified entries of `origin` from `from`, in order.
    pub fn range(
        &self,
        origin: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let txn = self.0.begin_read()?;
        let Some(t) = read_table(&txn, CERTIFIED)? else {
            return Ok(Default::default());
        };
        let mut out = Vec::new();
        for e in t
            .range((origin, from)..=(origin, u64::MAX))
            .map_err(StoreError::db)?
        {
            let (k, v) = e.map_err(StoreError::db)?;
            out.push((k.value().1, v.value().to_vec()));
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// Every origin with certified entries, and its next sequence number: one seek per
    /// origin, not a walk over every entry.
    pub fn heads(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let txn = self.0.begin_read()?;
        let Some(t) = read_table(&txn, CERTIFIED)? else {
            return Ok(Default::default());
        };
        let mut out: Vec<(String, u64)> = Vec::new();
        let mut from = String::new();
        loop {
            let first = t
                .range((from.as_str(), 0)..)
                .map_err(StoreError::db)?
                .next()
                .transpose()
                .map_err(StoreError::db)?;
            let Some((k, _)) = first else {
                return Ok(out);
            };
            let origin = k.value().0.to_string();
            let next = next_in(&t, &origin)?;
            from = format!("{origin}\0");
            out.push((origin, next));
        }
    }

    /// Stores a certified entry (its checks are the caller's) and drops it from pending.
    pub fn put_certified(
        &self,
        origin: &str,
        seq: u64,
        certified: &[u8],
    ) -> Result<(), StoreError> {
        let txn = self.0.begin_write()?;
        {
            let mut t = txn.open_table(CERTIFIED).map_err(StoreError::db)?;
            t.insert((origin, seq), certified).map_err(StoreError::db)?;
            let mut p = txn.open_table(PENDING).map_err(StoreError::db)?;
            p.remove((origin, seq)).map_err(StoreError::db)?;
        }
        txn.commit().map_err(StoreError::db)
    }

    /// The hash this node voted for at (origin, seq), if it voted there.
    pub fn voted(&self, origin: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.0.begin_read()?;
        let Some(t) = read_table(&txn, VOTED)? else {
            return Ok(Default::default());
        };
        Ok(t.get((origin, seq))
            .map_err(StoreError::db)?
            .map(|v| v.value().to_vec()))
    }

    /// Records, durably, a vote for each (origin, seq, entry hash) in one transaction, unless
    /// this node voted there before: then says whether for this entry or for another (and
    /// which one).
    pub fn lock_votes(
        &self,
        items: &[(String, u64, [u8; 32], Vec<u8>)],
    ) -> Result<Vec<VoteLock>, StoreError> {
        let txn = self.0.begin_write()?;
        let mut out = Vec::with_capacity(items.len());
        {
            let mut voted = txn.open_table(VOTED).map_err(StoreError::db)?;
            let mut pending = txn.open_table(PENDING).map_err(StoreError::db)?;
            let certified = txn.open_table(CERTIFIED).map_err(StoreError::db)?;
            for (origin, seq, hash, signed) in items {
                let (origin, seq) = (origin.as_str(), *seq);
                let prior = voted
                    .get((origin, seq))
                    .map_err(StoreError::db)?
                    .map(|v| v.value().to_vec());
                out.push(match prior {
                    Some(h) if h == hash.as_slice() => VoteLock::Again,
                    Some(_) => {
                        let other = match pending.get((origin, seq)).map_err(StoreError::db)? {
                            Some(v) => v.value().to_vec(),
                            None => certified
                                .get((origin, seq))
                                .map_err(StoreError::db)?
                                .and_then(|c| pb::CertifiedEntry::decode(c.value()).ok())
                                .and_then(|c| c.entry)
                                .map(|e| e.encode_to_vec())
                                .unwrap_or_default(),
                        };
                        VoteLock::Other(other)
                    }
                    None => {
                        voted
                            .insert((origin, seq), hash.as_slice())
                            .map_err(StoreError::db)?;
                        pending
                            .insert((origin, seq), signed.as_slice())
                            .map_err(StoreError::db)?;
                        VoteLock::Fresh
                    }
                });
            }
        }
        txn.commit().map_err(StoreError::db)?;
        Ok(out)
    }

    /// Stores several certified entries (checked by the caller) in one transaction.
    pub fn put_certified_many(&self, items: &[(String, u64, Vec<u8>)]) -> Result<(), StoreError> {
        let txn = self.0.begin_write()?;
        {
            let mut t = txn.open_table(CERTIFIED).map_err(StoreError::db)?;
            let mut p = txn.open_table(PENDING).map_err(StoreError::db)?;
            for (origin, seq, bytes) in items {
                t.insert((origin.as_str(), *seq), bytes.as_slice())
                    .map_err(StoreError::db)?;
                p.remove((origin.as_str(), *seq)).map_err(StoreError::db)?;
            }
        }
        txn.commit().map_err(StoreError::db)
    }

    /// Shuts `origin` out with its proof (kept once).
    pub fn shut_out(&self, origin: &str, proof: &[u8]) -> Result<(), StoreError> {
        let txn = self.0.begin_write()?;
        {
            let mut t = txn.open_table(SHUT_OUT).map_err(StoreError::db)?;
            if t.get(origin).map_err(StoreError::db)?.is_none() {
                t.insert(origin, proof).map_err(StoreError::db)?;
            }
        }
        txn.commit().map_err(StoreError::db)
    }

    /// The origins shut out, with their proofs.
    pub fn shut_outs(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.0.begin_read()?;
        let Some(t) = read_table(&txn, SHUT_OUT)? else {
            return Ok(Default::default());
        };
        let mut out = Vec::new();
        for e in t.iter().map_err(StoreError::db)? {
            let (k, v) = e.map_err(StoreError::db)?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// This node's own entries waiting for a certificate, in order.
    pub fn pending(&self, origin: &str) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.pending_first(origin, usize::MAX)
    }

    /// How many of them there are (they are contiguous: from the first not certified to
    /// the last appended), without reading them.
    pub fn pending_count(&self, origin: &str) -> Result<u64, StoreError> {
        let txn = self.0.begin_read()?;
        let Some(t) = read_table(&txn, PENDING)? else {
            return Ok(Default::default());
        };
        let mut range = t
            .range((origin, 0)..=(origin, u64::MAX))
            .map_err(StoreError::db)?;
        let first = range
            .next()
            .transpose()
            .map_err(StoreError::db)?
            .map(|(k, _)| k.value().1);
        let last = range
            .next_back()
            .transpose()
            .map_err(StoreError::db)?
            .map(|(k, _)| k.value().1);
        Ok(match (first, last) {
            (Some(f), Some(l)) => l - f + 1,
            (Some(_), None) => 1,
            _ => 0,
        })
    }

    /// The first `max` of them (a certifier's window: reading a long backlog whole for
    /// every window would make catching up quadratic).
    pub fn pending_first(
        &self,
        origin: &str,
        max: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let txn = self.0.begin_read()?;
        let Some(t) = read_table(&txn, PENDING)? else {
            return Ok(Default::default());
        };
        let mut out = Vec::new();
        for e in t
            .range((origin, 0)..=(origin, u64::MAX))
            .map_err(StoreError::db)?
            .take(max)
        {
            let (k, v) = e.map_err(StoreError::db)?;
            out.push((k.value().1, v.value().to_vec()));
        }
        Ok(out)
    }

    /// The signed entry at `seq` of this node's own log, pending or certified.
    pub fn own_entry(&self, origin: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.0.begin_read()?;
        if let Some(pending) = read_table(&txn, PENDING)?
            && let Some(v) = pending.get((origin, seq)).map_err(StoreError::db)?
        {
            return Ok(Some(v.value().to_vec()));
        }
        let Some(certified) = read_table(&txn, CERTIFIED)? else {
            return Ok(Default::default());
        };
        let entry = certified
            .get((origin, seq))
            .map_err(StoreError::db)?
            .and_then(|v| pb::CertifiedEntry::decode(v.value()).ok())
            .and_then(|c| c.entry)
            .map(|e| e.encode_to_vec());
        Ok(entry)
    }

    /// The claims of this node's own log that start with `prefix` (as `batches/`), with the
    /// sequence number each was appended at.
    pub fn claims(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let txn = self.0.begin_read()?;
        let Some(t) = read_table(&txn, CLAIMS)? else {
            return Ok(Default::default());
        };
        let mut out = Vec::new();
        for e in t.range(prefix..).map_err(StoreError::db)? {
            let (k, v) = e.map_err(StoreError::db)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_string(), v.value()));
        }
        Ok(out)
    }

    /// Appends an entry to this node's own log, once per `claim`: `make(seq, prev_hash)`
    /// builds the signed entry at the log's next place. Returns the sequence number (the
    /// existing one when the claim was appended before).
    pub fn append_own(
        &self,
        origin: &str,
        claim: &str,
        make: impl FnOnce(u64, [u8; 32]) -> Vec<u8>,
    ) -> Result<u64, StoreError> {
        let txn = self.0.begin_write()?;
        let seq = {
            let mut claims = txn.open_table(CLAIMS).map_err(StoreError::db)?;
            if let Some(s) = claims.get(claim).map_err(StoreError::db)? {
                return Ok(s.value());
            }
            let mut pending = txn.open_table(PENDING).map_err(StoreError::db)?;
            let certified = txn.open_table(CERTIFIED).map_err(StoreError::db)?;
            let next = next_in(&pending, origin)?.max(next_in(&certified, origin)?);
            let prev = if next == 0 {
                [0u8; 32]
            } else {
                let bytes = match pending.get((origin, next - 1)).map_err(StoreError::db)? {
                    Some(v) => v.value().to_vec(),
                    None => certified
                        .get((origin, next - 1))
                        .map_err(StoreError::db)?
                        .and_then(|v| pb::CertifiedEntry::decode(v.value()).ok())
                        .and_then(|c| c.entry)
                        .map(|e| e.encode_to_vec())
                        .unwrap_or_default(),
                };
                let signed = pb::SignedEntry::decode(bytes.as_slice()).unwrap_or_default();
                gridgate_core::sha256(&signed.entry)
            };
            let signed = make(next, prev);
            pending
                .insert((origin, next), signed.as_slice())
                .map_err(StoreError::db)?;
            claims.insert(claim, next).map_err(StoreError::db)?;
            next
        };
        txn.commit().map_err(StoreError::db)?;
        Ok(seq)
    }
}

/// Why decided cuts were not stored.
#[derive(Debug, thiserror::Error)]
pub enum AppendCutsError {
    /// Another writer decided cuts first: the chain no longer ends where the caller began.
    #[error("the chain of decided cuts ends at {now}, not {expected}")]
    Moved {
        /// Where the caller's cuts begin after.
        expected: u64,
        /// Where the chain ends now.
        now: u64,
    },
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn encode_head(h: &gridgate_ledger::cut::HeadAt) -> [u8; 48] {
    let mut out = [0; 48];
    out[..8].copy_from_slice(&h.next.to_be_bytes());
    out[8..40].copy_from_slice(&h.last_hash);
    out[40..].copy_from_slice(&h.height.to_be_bytes());
    out
}

fn decode_head(b: &[u8]) -> Option<gridgate_ledger::cut::HeadAt> {
    Some(gridgate_ledger::cut::HeadAt {
        next: u64::from_be_bytes(b.get(..8)?.try_into().ok()?),
        last_hash: b.get(8..40)?.try_into().ok()?,
        height: u64::from_be_bytes(b.get(40..48)?.try_into().ok()?),
    })
}

impl LedgerTables<'_> {
    /// Every log's head as of the newest decided cut (the genesis state before any).
    pub fn decided_state(&self) -> Result<gridgate_ledger::cut::CutState, StoreError> {
        use gridgate_ledger::cut;
        let txn = self.0.begin_read()?;
        let Some(t) = read_table(&txn, CUTS)? else {
            return Ok(cut::CutState::genesis());
        };
        let Some(last) = t.last().map_err(StoreError::db)? else {
            return Ok(cut::CutState::genesis());
        };
        let decided = pb::DecidedCut::decode(last.1.value()).map_err(|e| {
            StoreError::db(redb::Error::Corrupted(format!(
                "decided cut {}: {e}",
                last.0.value()
            )))
        })?;
        let c = cut::decode(&decided.cut).map_err(|e| {
            StoreError::db(redb::Error::Corrupted(format!(
                "decided cut {}: {e}",
                last.0.value()
            )))
        })?;
        let mut heads = std::collections::BTreeMap::new();
        if let Some(h) = read_table(&txn, CUT_HEADS)? {
            for e in h.iter().map_err(StoreError::db)? {
                let (k, v) = e.map_err(StoreError::db)?;
                let head = decode_head(v.value()).ok_or_else(|| {
                    StoreError::db(redb::Error::Corrupted(format!("cut head of {}", k.value())))
                })?;
                heads.insert(k.value().to_string(), head);
            }
        }
        Ok(cut::CutState {
            height: c.height,
            digest: cut::digest(&decided.cut),
            time_ms: c.time_ms,
            heads,
        })
    }

    /// Appends decided cuts (checked by the caller against the chain ending at `after`, in
    /// height order) and the heads as of the last of them, in one transaction.
    pub fn append_cuts(
        &self,
        after: u64,
        cuts: &[(u64, pb::DecidedCut)],
        state: &gridgate_ledger::cut::CutState,
    ) -> Result<(), AppendCutsError> {
        let txn = self.0.begin_write()?;
        {
            let mut t = txn.open_table(CUTS).map_err(StoreError::db)?;
            let now = t
                .last()
                .map_err(StoreError::db)?
                .map_or(0, |(k, _)| k.value());
            if now != after {
                return Err(AppendCutsError::Moved {
                    expected: after,
                    now,
                });
            }
            let mut h = txn.open_table(CUT_HEADS).map_err(StoreError::db)?;
            let mut orders = txn.open_table(CUT_ORDERS).map_err(StoreError::db)?;
            let mut before: std::collections::BTreeMap<String, u64> = Default::default();
            for (height, c) in cuts {
                t.insert(*height, c.encode_to_vec().as_slice())
                    .map_err(StoreError::db)?;
                let body = gridgate_ledger::cut::decode(&c.cut).map_err(|e| {
                    StoreError::db(redb::Error::Corrupted(format!("decided cut {height}: {e}")))
                })?;
                for head in &body.heads {
                    let from = match before.get(&head.origin) {
                        Some(n) => *n,
                        None => h
                            .get(head.origin.as_str())
                            .map_err(StoreError::db)?
                            .and_then(|v| decode_head(v.value()))
                            .map_or(0, |a| a.next),
                    };
                    orders
                        .insert((head.origin.as_str(), head.next), (*height, from))
                        .map_err(StoreError::db)?;
                    before.insert(head.origin.clone(), head.next);
                }
            }
            for (origin, head) in state.heads.iter().filter(|(_, h)| h.height > after) {
                h.insert(origin.as_str(), encode_head(head).as_slice())
                    .map_err(StoreError::db)?;
            }
        }
        txn.commit().map_err(StoreError::db)?;
        Ok(())
    }

    /// The entries the decided cut `cut` ordered: (origin, first seq, next seq) for each
    /// log it moved.
    pub fn ordered_by(&self, cut: &pb::Cut) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let txn = self.0.begin_read()?;
        let Some(t) = read_table(&txn, CUT_ORDERS)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for head in &cut.heads {
            if let Some(v) = t
                .get((head.origin.as_str(), head.next))
                .map_err(StoreError::db)?
            {
                let (height, from) = v.value();
                if height == cut.height {
                    out.push((head.origin.clone(), from, head.next));
                }
            }
        }
        Ok(out)
    }

    /// Every log's next sequence number as of the decided cut at `height`: the newest fold,
    /// walked back along the orders of the cuts after it (a few steps for a recent cut).
    pub fn heads_at(
        &self,
        height: u64,
    ) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        let txn = self.0.begin_read()?;
        let mut out = std::collections::BTreeMap::new();
        let (Some(heads), Some(orders)) =
            (read_table(&txn, CUT_HEADS)?, read_table(&txn, CUT_ORDERS)?)
        else {
            return Ok(out);
        };
        for e in heads.iter().map_err(StoreError::db)? {
            let (k, v) = e.map_err(StoreError::db)?;
            let origin = k.value().to_string();
            let Some(mut at) = decode_head(v.value()).map(|h| h.next) else {
                continue;
            };
            // Each order (origin, next) -> (its cut, the next before it): step back past
            // every cut above `height`.
            while at > 0 {
                let Some(o) = orders.get((origin.as_str(), at)).map_err(StoreError::db)? else {
                    break;
                };
                let (cut, before) = o.value();
                if cut <= height {
                    break;
                }
                at = before;
            }
            if at > 0 {
                out.insert(origin, at);
            }
        }
        Ok(out)
    }

    /// The height of the decided cut that ordered `origin`'s entry `seq`, if one has.
    pub fn ordered_at(&self, origin: &str, seq: u64) -> Result<Option<u64>, StoreError> {
        let txn = self.0.begin_read()?;
        let Some(t) = read_table(&txn, CUT_ORDERS)? else {
            return Ok(None);
        };
        let first = t
            .range((origin, seq.saturating_add(1))..=(origin, u64::MAX))
            .map_err(StoreError::db)?
            .next()
            .transpose()
            .map_err(StoreError::db)?;
        Ok(first.map(|(_, v)| v.value().0))
    }

    /// The first decided cut whose time is at or after `time_ms` (cut times rise with the
    /// height): its height, by bisection.
    pub fn first_cut_at(&self, time_ms: i64) -> Result<Option<u64>, StoreError> {
        let txn = self.0.begin_read()?;
        let Some(t) = read_table(&txn, CUTS)? else {
            return Ok(None);
        };
        let time_of = |height: u64| -> Result<Option<i64>, StoreError> {
            let Some(v) = t.get(height).map_err(StoreError::db)? else {
                return Ok(None);
            };
            let c = pb::DecidedCut::decode(v.value()).map_err(|e| {
                StoreError::db(redb::Error::Corrupted(format!("decided cut {height}: {e}")))
            })?;
            let body = gridgate_ledger::cut::decode(&c.cut).map_err(|e| {
                StoreError::db(redb::Error::Corrupted(format!("decided cut {height}: {e}")))
            })?;
            Ok(Some(body.time_ms))
        };
        let (Some(first), Some(last)) = (
            t.first().map_err(StoreError::db)?.map(|(k, _)| k.value()),
            t.last().map_err(StoreError::db)?.map(|(k, _)| k.value()),
        ) else {
            return Ok(None);
        };
        if time_of(last)?.is_none_or(|t| t < time_ms) {
            return Ok(None);
        }
        let (mut lo, mut hi) = (first, last);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if time_of(mid)?.is_some_and(|t| t >= time_ms) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(Some(lo))
    }

    /// Decided cuts from `from`, at most `max`, by height.
    pub fn cuts(&self, from: u64, max: usize) -> Result<Vec<(u64, pb::DecidedCut)>, StoreError> {
        let txn = self.0.begin_read()?;
        let Some(t) = read_table(&txn, CUTS)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in t.range(from..).map_err(StoreError::db)?.take(max) {
            let (k, v) = e.map_err(StoreError::db)?;
            let c = pb::DecidedCut::decode(v.value()).map_err(|e| {
                StoreError::db(redb::Error::Corrupted(format!(
                    "decided cut {}: {e}",
                    k.value()
                )))
            })?;
            out.push((k.value(), c));
        }
        Ok(out)
    }

    /// The decided cut at `height`.
    pub fn cut(&self, height: u64) -> Result<Option<pb::DecidedCut>, StoreError> {
        Ok(self
            .cuts(height, 1)?
            .into_iter()
            .find(|(h, _)| *h == height)
            .map(|(_, c)| c))
    }

    /// Every origin with certified entries: its next sequence number and the hash of the
    /// entry before it.
    pub fn certified_heads(&self) -> Result<Vec<(String, u64, [u8; 32])>, StoreError> {
        let mut out = Vec::new();
        for (origin, next) in self.heads()? {
            let Some(bytes) = self.certified(&origin, next.saturating_sub(1))? else {
                continue;
            };
            let c = pb::CertifiedEntry::decode(bytes.as_slice()).map_err(|e| {
                StoreError::db(redb::Error::Corrupted(format!(
                    "certified entry of {origin}: {e}"
                )))
            })?;
            let hash = c
                .entry
                .as_ref()
                .map(gridgate_ledger::entry::entry_hash)
                .unwrap_or_default();
            out.push((origin, next, hash));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_the_node_never_wrote_to_reads_as_empty() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path(), "gw").expect("store");
        assert_eq!(store.ledger().next_certified("gw").expect("next"), 0);
        assert!(store.ledger().heads().expect("heads").is_empty());
        assert_eq!(store.ledger().own_entry("gw", 0).expect("own"), None);
        assert_eq!(store.ledger().voted("gw", 0).expect("voted"), None);
        assert!(
            store
                .ledger()
                .claims("batches/")
                .expect("claims")
                .is_empty()
        );
    }

    #[test]
    fn own_entries_append_once_per_claim_in_order_and_wait_until_certified() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path(), "gw").expect("store");
        let make = |tag: &'static str| {
            move |seq: u64, prev: [u8; 32]| {
                pb::SignedEntry {
                    entry: pb::Entry {
                        origin: "gw".into(),
                        seq,
                        prev_hash: prev.to_vec(),
                        payload: tag.as_bytes().to_vec(),
                        ..Default::default()
                    }
                    .encode_to_vec(),
                    signature: vec![],
                }
                .encode_to_vec()
            }
        };
        assert_eq!(
            store.ledger().append_own("gw", "a", make("a")).expect("a"),
            0
        );
        assert_eq!(
            store.ledger().append_own("gw", "b", make("b")).expect("b"),
            1
        );
        assert_eq!(
            store
                .ledger()
                .append_own("gw", "a", make("a2"))
                .expect("again"),
            0
        );
        let pending = store.ledger().pending("gw").expect("pending");
        assert_eq!(pending.iter().map(|p| p.0).collect::<Vec<_>>(), vec![0, 1]);
        // The second chains to the first.
        let first = pb::SignedEntry::decode(pending[0].1.as_slice()).expect("first");
        let second = pb::SignedEntry::decode(pending[1].1.as_slice()).expect("second");
        let second = pb::Entry::decode(second.entry.as_slice()).expect("entry");
        assert_eq!(
            second.prev_hash,
            gridgate_core::sha256(&first.entry).to_vec()
        );
        store
            .ledger()
            .put_certified("gw", 0, b"cert")
            .expect("certify");
        assert_eq!(store.ledger().pending("gw").expect("pending").len(), 1);
        assert_eq!(store.ledger().next_certified("gw").expect("next"), 1);
    }
}
