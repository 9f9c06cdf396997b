//! Batch commitments: a gateway's signed batches as one growing RFC 6962 tree (leaves: each
//! batch's canonical bytes, `SignedBatch.batch`). Each commitment adds the batches closed
//! since the one before it, carries the consistency proof from that tree to the new one and
//! the new tree's frontier; so anyone holding the certified commitments checks that each
//! newer one extends the older, and proves a batch included with only the batches since the
//! commitment before the one that added it.
//!
//! Pure: the gateway's certifier makes them (`next`), validators check their shape
//! (`shape_ok`), the master station's `gridgate ledger prove` audits them (`audit`, `prove`).

use gridgate_proto::v1 as pb;

use crate::merkle::{self, Hash};

fn hashes(v: &[Vec<u8>]) -> Option<Vec<Hash>> {
    v.iter().map(|h| h.as_slice().try_into().ok()).collect()
}

/// The frontier a commitment carries, if well formed.
pub fn frontier_of(c: &pb::BatchCommitment) -> Option<Vec<Hash>> {
    hashes(&c.frontier)
}

/// The commitment after `prev` (of the same tree) adding `leaves`, or the first of a new tree
/// from batch `first` when `prev` is `None`.
pub fn next(
    prev: Option<&pb::BatchCommitment>,
    first: u64,
    leaves: &[Hash],
) -> pb::BatchCommitment {
    let (first, size, frontier) = match prev.and_then(|p| Some((p, frontier_of(p)?))) {
        Some((p, f)) => (p.first_seq, p.tree_size, f),
        None => (first, 0, Vec::new()),
    };
    let grown = merkle::frontier_extend(&frontier, size, leaves);
    let proof = merkle::consistency_proof(size, &frontier, leaves).unwrap_or_default();
    pb::BatchCommitment {
        first_seq: first,
        tree_size: size + leaves.len() as u64,
        root: merkle::frontier_root(&grown).to_vec(),
        previous_size: size,
        consistency: proof.iter().map(|h| h.to_vec()).collect(),
        frontier: grown.iter().map(|h| h.to_vec()).collect(),
    }
}

/// What a validator checks before it votes: a tree that grew, a frontier of the tree's size
/// whose fold is the root, hashes of 32 bytes. (That it extends the gateway's previous
/// commitment is checked by whoever audits the log: `audit`.)
pub fn shape_ok(c: &pb::BatchCommitment) -> bool {
    let Some(frontier) = frontier_of(c) else {
        return false;
    };
    c.tree_size > c.previous_size
        && frontier.len() == c.tree_size.count_ones() as usize
        && merkle::frontier_root(&frontier).as_slice() == c.root.as_slice()
        && hashes(&c.consistency).is_some()
}

/// A certified commitment as the audit reads it: its place in the gateway's log.
#[derive(Debug, Clone)]
pub struct Logged {
    /// The entry's sequence number in the gateway's log.
    pub entry: u64,
    /// The commitment.
    pub c: pb::BatchCommitment,
}

/// What the audit found about one commitment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Its consistency proof checks against the commitment before it (at `previous`).
    Extends {
        /// This one's entry.
        entry: u64,
        /// The one it extends.
        previous: u64,
    },
    /// It starts a tree at `first`, after the batches `from..first` that have none.
    NewTree {
        /// Its entry.
        entry: u64,
        /// Where the batches without a commitment start (the end of the last tree).
        from: u64,
        /// Its tree's first batch.
        first: u64,
    },
    /// The batches it added (`from..to`) are all at hand and grow the tree to its root.
    Matches {
        /// Its entry.
        entry: u64,
        /// First batch it added.
        from: u64,
        /// One past its last.
        to: u64,
    },
    /// Only `have` of the batches it added are at hand: its root was not recomputed.
    Partial {
        /// Its entry.
        entry: u64,
        /// First batch it added.
        from: u64,
        /// One past its last.
        to: u64,
        /// How many are at hand.
        have: u64,
    },
    /// Something that must not be.
    Fault {
        /// Its entry.
        entry: u64,
        what: String,
    },
}

/// Audits a gateway's certified commitments, in log order, with the leaf hash of each batch
/// at hand (`leaf(seq)`).
pub fn audit(log: &[Logged], leaf: &dyn Fn(u64) -> Option<Hash>) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut last: Option<&Logged> = None;
    for l in log {
        let (c, entry) = (&l.c, l.entry);
        if !shape_ok(c) {
            out.push(Finding::Fault {
                entry,
                what: "its frontier does not fold to its root (or the tree did not grow)".into(),
            });
            continue;
        }
        let prev = last.filter(|p| p.c.first_seq == c.first_seq && c.previous_size > 0);
        match prev {
            Some(p) => {
                let (Some(old), Some(new), Some(proof)) = (
                    <[u8; 32]>::try_from(p.c.root.as_slice()).ok(),
                    <[u8; 32]>::try_from(c.root.as_slice()).ok(),
                    hashes(&c.consistency),
                ) else {
                    continue;
                };
                let ok = p.c.tree_size == c.previous_size
                    && merkle::verify_consistency(c.previous_size, c.tree_size, &old, &new, &proof);
                out.push(if ok {
                    Finding::Extends {
                        entry,
                        previous: p.entry,
                    }
                } else {
                    Finding::Fault {
                        entry,
                        what: format!(
                            "it does not extend the commitment at entry {} (tree of {} batches): its consistency proof does not check",
                            p.entry, p.c.tree_size
                        ),
                    }
                });
            }
            None => {
                let end = last.map(|p| p.c.first_seq + p.c.tree_size);
                if c.previous_size > 0 {
                    out.push(Finding::Fault {
                        entry,
                        what: format!(
                            "it claims to extend a tree of {} batches from {} that no earlier commitment holds",
                            c.previous_size, c.first_seq
                        ),
                    });
                } else if end.is_some_and(|e| c.first_seq < e) {
                    out.push(Finding::Fault {
                        entry,
                        what: format!(
                            "a new tree from batch {} overlaps the last one (which ended at {})",
                            c.first_seq,
                            end.unwrap_or_default()
                        ),
                    });
                } else {
                    out.push(Finding::NewTree {
                        entry,
                        from: end.unwrap_or(c.first_seq),
                        first: c.first_seq,
                    });
                }
            }
        }
        // The batches this one added, grown onto the tree before it.
        let base = prev.and_then(|p| frontier_of(&p.c)).unwrap_or_default();
        let m = if prev.is_some() { c.previous_size } else { 0 };
        let (from, to) = (c.first_seq + m, c.first_seq + c.tree_size);
        let leaves: Vec<Hash> = (from..to).filter_map(leaf).collect();
        if leaves.len() as u64 == to - from {
            let grown = merkle::frontier_extend(&base, m, &leaves);
            if merkle::frontier_root(&grown).as_slice() == c.root.as_slice() {
                out.push(Finding::Matches { entry, from, to });
            } else {
                out.push(Finding::Fault {
                    entry,
                    what: format!(
                        "the batches {from}..{to} at hand do not grow the tree to its root"
                    ),
                });
            }
        } else {
            out.push(Finding::Partial {
                entry,
                from,
                to,
                have: leaves.len() as u64,
            });
        }
        last = Some(l);
    }
    out
}

/// One batch's inclusion in a certified commitment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inclusion {
    /// The commitment's entry in the gateway's log.
    pub entry: u64,
    /// The batch's leaf index in the tree.
    pub index: u64,
    /// The tree's size.
    pub size: u64,
    /// The batch's leaf hash.
    pub leaf: Hash,
    /// Its audit path, from the leaf up.
    pub path: Vec<Hash>,
    /// The root it proves.
    pub root: Hash,
}

/// Proves batch `seq` in the commitment that added it, from the frontier of the commitment
/// before that one and the batches added since (`leaf(seq)`); `None` if one of those is not
/// at hand or no commitment added it.
pub fn prove(log: &[Logged], leaf: &dyn Fn(u64) -> Option<Hash>, seq: u64) -> Option<Inclusion> {
    let mut last: Option<&Logged> = None;
    for l in log {
        let c = &l.c;
        let prev = last.filter(|p| p.c.first_seq == c.first_seq && c.previous_size > 0);
        let m = if prev.is_some() { c.previous_size } else { 0 };
        let (from, to) = (c.first_seq + m, c.first_seq + c.tree_size);
        if (from..to).contains(&seq) {
            let base = prev.and_then(|p| frontier_of(&p.c)).unwrap_or_default();
            let leaves: Vec<Hash> = (from..to).map(leaf).collect::<Option<_>>()?;
            let index = seq - c.first_seq;
            let path = merkle::audit_path_after(m, &base, &leaves, index)?;
            let root: Hash = c.root.as_slice().try_into().ok()?;
            let leaf_hash = leaves[(seq - from) as usize];
            return merkle::verify_inclusion(&leaf_hash, index, c.tree_size, &path, &root)
                .then_some(Inclusion {
                    entry: l.entry,
                    index,
                    size: c.tree_size,
                    leaf: leaf_hash,
                    path,
                    root,
                });
        }
        last = Some(l);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf_of(seq: u64) -> Hash {
        merkle::leaf(&seq.to_be_bytes())
    }

    /// Commitments of batches 0..12 four at a time, then (after batches 12..14 were
    /// dropped) a new tree from 14 with two of three.
    fn log() -> Vec<Logged> {
        let mut out = Vec::new();
        let mut prev: Option<pb::BatchCommitment> = None;
        for k in 0..3u64 {
            let leaves: Vec<Hash> = (4 * k..4 * k + 4).map(leaf_of).collect();
            let c = next(prev.as_ref(), 0, &leaves);
            out.push(Logged {
                entry: k,
                c: c.clone(),
            });
            prev = Some(c);
        }
        let c = next(None, 14, &[leaf_of(14), leaf_of(15)]);
        out.push(Logged {
            entry: 3,
            c: c.clone(),
        });
        let c = next(Some(&c), 0, &[leaf_of(16)]);
        out.push(Logged { entry: 4, c });
        out
    }

    #[test]
    fn a_growing_tree_extends_each_commitment_and_proves_each_batch() {
        let log = log();
        assert!(log.iter().all(|l| shape_ok(&l.c)));
        assert_eq!(log[2].c.tree_size, 12);
        assert_eq!(
            log[2].c.root,
            merkle::root(&(0..12).map(leaf_of).collect::<Vec<_>>()).to_vec()
        );
        let all = |s: u64| Some(leaf_of(s));
        let found = audit(&log, &all);
        assert!(found.contains(&Finding::Extends {
            entry: 1,
            previous: 0
        }));
        assert!(found.contains(&Finding::Extends {
            entry: 2,
            previous: 1
        }));
        assert!(found.contains(&Finding::NewTree {
            entry: 3,
            from: 12,
            first: 14
        }));
        assert!(found.contains(&Finding::Extends {
            entry: 4,
            previous: 3
        }));
        assert!(found.contains(&Finding::Matches {
            entry: 2,
            from: 8,
            to: 12
        }));
        assert!(
            !found.iter().any(|f| matches!(f, Finding::Fault { .. })),
            "{found:?}"
        );
        // Batch 9 with only batches 8..12 at hand (and the frontier of entry 1).
        let recent = |s: u64| (8..12).contains(&s).then(|| leaf_of(s));
        let p = prove(&log, &recent, 9).expect("proved");
        assert_eq!((p.entry, p.index, p.size), (2, 9, 12));
        assert!(merkle::verify_inclusion(&p.leaf, 9, 12, &p.path, &p.root));
        assert_eq!(
            prove(&log, &recent, 5),
            None,
            "batches 4..8 are not at hand"
        );
        assert_eq!(prove(&log, &all, 13), None, "no commitment holds batch 13");
        let p = prove(&log, &all, 16).expect("the new tree's batch");
        assert_eq!((p.entry, p.index, p.size), (4, 2, 3));
    }

    #[test]
    fn a_commitment_that_does_not_extend_the_tree_is_a_fault() {
        let mut log = log();
        // Entry 2 re-rooted over other batches 8..12 (with a frontier that folds to it).
        let other: Vec<Hash> = (108..112).map(leaf_of).collect();
        log[2].c = next(Some(&log[1].c), 0, &other);
        let found = audit(&log, &|s| Some(leaf_of(s)));
        let faults: Vec<_> = found
            .iter()
            .filter(|f| matches!(f, Finding::Fault { entry: 2, .. }))
            .collect();
        assert_eq!(faults.len(), 1, "{found:?}");
        // A consistency proof from another tree: the extension itself fails.
        let mut forged = log.clone();
        let unrelated = next(None, 0, &(200..208).map(leaf_of).collect::<Vec<_>>());
        forged[1].c.consistency = next(Some(&unrelated), 0, &[leaf_of(300)]).consistency;
        let found = audit(&forged, &|s| Some(leaf_of(s)));
        assert!(
            found.iter().any(
                |f| matches!(f, Finding::Fault { entry: 1, what } if what.contains("consistency"))
            ),
            "{found:?}"
        );
        // A frontier that does not fold to the root is refused by its shape.
        let mut bad = log[0].c.clone();
        bad.frontier[0][0] ^= 1;
        assert!(!shape_ok(&bad));
    }
}
