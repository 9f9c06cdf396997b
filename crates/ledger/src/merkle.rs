//! Merkle trees as RFC 6962 (Certificate Transparency) defines them, for batch commitments:
//! a leaf is SHA-256(0x00 || data), an inner node SHA-256(0x01 || left || right), and a tree
//! of n leaves splits at the largest power of two below n. The prefixes keep a leaf from ever
//! passing for a node. With the root on the ledger, the master station can check that one
//! batch (and so one reading) is in a commitment from an audit path of log2(n) hashes.

use sha2::{Digest, Sha256};

/// A 32-byte hash.
pub type Hash = [u8; 32];

/// The hash of a leaf's data.
pub fn leaf(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

fn node(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Largest power of two strictly below `n` (n >= 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// The root over leaf hashes (SHA-256 of nothing for an empty tree).
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The audit path of leaf `index` (RFC 6962, 2.1.1), from the leaf up.
pub fn audit_path(leaves: &[Hash], index: usize) -> Vec<Hash> {
    let n = leaves.len();
    if n <= 1 || index >= n {
        return Vec::new();
    }
    let k = split(n);
    if index < k {
        let mut p = audit_path(&leaves[..k], index);
        p.push(root(&leaves[k..]));
        p
    } else {
        let mut p = audit_path(&leaves[k..], index - k);
        p.push(root(&leaves[..k]));
        p
    }
}

/// The root and every leaf's audit path at once, in O(n log n) hashes (calling
/// [`audit_path`] for each leaf costs O(n) each): for a validator's one vote over a window.
pub fn root_and_paths(leaves: &[Hash]) -> (Hash, Vec<Vec<Hash>>) {
    match leaves.len() {
        0 => (root(leaves), Vec::new()),
        1 => (leaves[0], vec![Vec::new()]),
        n => {
            let k = split(n);
            let (left, mut left_paths) = root_and_paths(&leaves[..k]);
            let (right, right_paths) = root_and_paths(&leaves[k..]);
            for p in &mut left_paths {
                p.push(right);
            }
            left_paths.extend(right_paths.into_iter().map(|mut p| {
                p.push(left);
                p
            }));
            (node(&left, &right), left_paths)
        }
    }
}

/// The sizes of a tree's maximal perfect subtrees, left to right: the binary digits of
/// `size`, largest first.
fn frontier_sizes(size: u64) -> Vec<u64> {
    (0..64)
        .rev()
        .map(|b| 1u64 << b)
        .filter(|bit| size & bit != 0)
        .collect()
}

/// The frontier of a tree of `size` leaves after `leaves` are appended to a tree of `size`
/// leaves with frontier `frontier` (the roots of its maximal perfect subtrees, left to right:
/// all it takes to go on growing the tree and to prove the next tree consistent with it).
pub fn frontier_extend(frontier: &[Hash], size: u64, leaves: &[Hash]) -> Vec<Hash> {
    let mut stack: Vec<(u64, Hash)> = frontier_sizes(size)
        .into_iter()
        .zip(frontier.iter().copied())
        .collect();
    for l in leaves {
        stack.push((1, *l));
        while stack.len() >= 2 && stack[stack.len() - 1].0 == stack[stack.len() - 2].0 {
            let (s, right) = stack.pop().unwrap_or_default();
            let (_, left) = stack.pop().unwrap_or_default();
            stack.push((2 * s, node(&left, &right)));
        }
    }
    stack.into_iter().map(|(_, h)| h).collect()
}

/// The root of the tree whose frontier this is (RFC 6962: a tree splits at the largest power
/// of two below its size, which is its first maximal perfect subtree).
pub fn frontier_root(frontier: &[Hash]) -> Hash {
    let mut it = frontier.iter().rev();
    let Some(last) = it.next() else {
        return Sha256::digest([]).into();
    };
    it.fold(*last, |r, h| node(h, &r))
}

/// What is known of a tree of `n` leaves: the frontier of its first `m` and the leaves after
/// them. Any subtree the RFC 6962 proofs ask for that reaches past `m` is computed from these.
struct Known<'a> {
    m: u64,
    old: Vec<((u64, u64), Hash)>,
    leaves: &'a [Hash],
}

impl<'a> Known<'a> {
    fn new(m: u64, frontier: &[Hash], leaves: &'a [Hash]) -> Option<Known<'a>> {
        let sizes = frontier_sizes(m);
        if sizes.len() != frontier.len() {
            return None;
        }
        let mut lo = 0;
        let mut old = Vec::new();
        for (s, h) in sizes.into_iter().zip(frontier) {
            old.push(((lo, lo + s), *h));
            lo += s;
        }
        Some(Known { m, old, leaves })
    }

    /// MTH of leaves `[lo, hi)`.
    fn mth(&self, lo: u64, hi: u64) -> Option<Hash> {
        if hi <= self.m {
            return self
                .old
                .iter()
                .find(|(r, _)| *r == (lo, hi))
                .map(|(_, h)| *h);
        }
        if lo >= self.m {
            let (a, b) = ((lo - self.m) as usize, (hi - self.m) as usize);
            return self.leaves.get(a..b).map(root);
        }
        let k = split((hi - lo) as usize) as u64;
        Some(node(&self.mth(lo, lo + k)?, &self.mth(lo + k, hi)?))
    }

    /// RFC 9162 2.1.4.1 SUBPROOF(m, D[lo:hi], b), with `m` relative to `lo`.
    fn subproof(&self, m: u64, lo: u64, hi: u64, whole: bool) -> Option<Vec<Hash>> {
        let n = hi - lo;
        if m == n {
            return Some(if whole {
                Vec::new()
            } else {
                vec![self.mth(lo, hi)?]
            });
        }
        let k = split(n as usize) as u64;
        let mut p;
        if m <= k {
            p = self.subproof(m, lo, lo + k, whole)?;
            p.push(self.mth(lo + k, hi)?);
        } else {
            p = self.subproof(m - k, lo + k, hi, false)?;
            p.push(self.mth(lo, lo + k)?);
        }
        Some(p)
    }

    /// RFC 6962 audit path of leaf `index` (>= m) in the tree `[lo, hi)`.
    fn path(&self, index: u64, lo: u64, hi: u64) -> Option<Vec<Hash>> {
        if hi - lo <= 1 {
            return Some(Vec::new());
        }
        let k = split((hi - lo) as usize) as u64;
        let mut p;
        if index < lo + k {
            p = self.path(index, lo, lo + k)?;
            p.push(self.mth(lo + k, hi)?);
        } else {
            p = self.path(index, lo + k, hi)?;
            p.push(self.mth(lo, lo + k)?);
        }
        Some(p)
    }
}

/// The RFC 9162 consistency proof that the tree of `m` leaves (with this frontier) is a prefix
/// of the tree grown from it by `leaves`. `None` if the frontier does not fit `m`. Empty when
/// `m` is 0 or nothing was added.
pub fn consistency_proof(m: u64, frontier: &[Hash], leaves: &[Hash]) -> Option<Vec<Hash>> {
    let n = m + leaves.len() as u64;
    if m == 0 || m == n {
        return Some(Vec::new());
    }
    Known::new(m, frontier, leaves)?.subproof(m, 0, n, true)
}

/// The audit path of leaf `index` (at or after `m`) of the tree grown from a tree of `m`
/// leaves (with this frontier) by `leaves`: what proves one new leaf with only the leaves
/// added since the tree of `m` and that tree's frontier.
pub fn audit_path_after(
    m: u64,
    frontier: &[Hash],
    leaves: &[Hash],
    index: u64,
) -> Option<Vec<Hash>> {
    let n = m + leaves.len() as u64;
    if index < m || index >= n {
        return None;
    }
    Known::new(m, frontier, leaves)?.path(index, 0, n)
}

/// Checks an RFC 9162 (2.1.4.2) consistency proof: the tree of `m` leaves with root
/// `old_root` is a prefix of the tree of `n` leaves with root `new_root`.
pub fn verify_consistency(
    m: u64,
    n: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if m == 0 || m > n {
        return false;
    }
    if m == n {
        return proof.is_empty() && old_root == new_root;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if m.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut fn_, mut sn) = (m - 1, n - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node(c, &fr);
            sr = node(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && fr == *old_root && sr == *new_root
}

/// Checks that `leaf_hash` is leaf `index` of the tree of `size` leaves with root `root`
/// (RFC 9162, 2.1.3.2).
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    path: &[Hash],
    root: &Hash,
) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf_hash;
    for p in path {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == *root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex32(s: &str) -> Hash {
        let v = hex::decode(s).expect("hex");
        v.try_into().expect("32 bytes")
    }

    /// The test vectors of the Certificate Transparency reference implementation
    /// (merkle_tree_test.cc): the leaves are these byte strings, the roots for sizes 1..=8.
    #[test]
    fn roots_match_the_certificate_transparency_vectors() {
        let inputs: [&[u8]; 8] = [
            b"",
            &[0x00],
            &[0x10],
            &[0x20, 0x21],
            &[0x30, 0x31],
            &[0x40, 0x41, 0x42, 0x43],
            &[0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
            &[
                0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d,
                0x6e, 0x6f,
            ],
        ];
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let leaves: Vec<Hash> = inputs.iter().map(|d| leaf(d)).collect();
        for (n, want) in roots.iter().enumerate() {
            assert_eq!(root(&leaves[..=n]), hex32(want), "tree of {} leaves", n + 1);
        }
        assert_eq!(
            root(&[]),
            hex32("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
    }

    #[test]
    fn every_leaf_proves_its_inclusion_and_nothing_else_does() {
        for n in 1..=13usize {
            let leaves: Vec<Hash> = (0..n).map(|i| leaf(&[i as u8])).collect();
            let r = root(&leaves);
            for i in 0..n {
                let path = audit_path(&leaves, i);
                assert!(
                    verify_inclusion(&leaves[i], i as u64, n as u64, &path, &r),
                    "{i} of {n}"
                );
                let wrong = leaf(b"not in the tree");
                assert!(!verify_inclusion(&wrong, i as u64, n as u64, &path, &r));
                if n > 1 {
                    let j = (i + 1) % n;
                    assert!(
                        !verify_inclusion(&leaves[i], j as u64, n as u64, &path, &r)
                            || leaves[i] == leaves[j]
                    );
                }
            }
        }
    }

    #[test]
    fn every_path_at_once_is_each_leafs_audit_path() {
        for n in [1usize, 2, 3, 5, 8, 13, 256] {
            let leaves: Vec<Hash> = (0..n).map(|i| leaf(&i.to_be_bytes())).collect();
            let (r, paths) = root_and_paths(&leaves);
            assert_eq!(r, root(&leaves), "n = {n}");
            for (i, p) in paths.iter().enumerate() {
                assert_eq!(*p, audit_path(&leaves, i), "n = {n}, leaf {i}");
                assert!(verify_inclusion(&leaves[i], i as u64, n as u64, p, &r));
            }
        }
    }

    #[test]
    fn a_grown_tree_is_proved_consistent_with_every_smaller_one_from_its_frontier_alone() {
        let leaves: Vec<Hash> = (0..40u64).map(|i| leaf(&i.to_be_bytes())).collect();
        for n in 1..=leaves.len() {
            let new_root = root(&leaves[..n]);
            let grown = frontier_extend(&[], 0, &leaves[..n]);
            assert_eq!(frontier_root(&grown), new_root, "n = {n}");
            for m in 1..=n {
                let frontier = frontier_extend(&[], 0, &leaves[..m]);
                let old_root = root(&leaves[..m]);
                // Growing the frontier of m by the rest is the frontier of n.
                assert_eq!(frontier_extend(&frontier, m as u64, &leaves[m..n]), grown);
                let proof = consistency_proof(m as u64, &frontier, &leaves[m..n]).expect("proof");
                assert!(
                    verify_consistency(m as u64, n as u64, &old_root, &new_root, &proof),
                    "m = {m}, n = {n}"
                );
                if m < n {
                    // Another old tree, another new tree, or a changed hash: not consistent.
                    let other = leaf(b"other");
                    assert!(!verify_consistency(
                        m as u64, n as u64, &other, &new_root, &proof
                    ));
                    assert!(!verify_consistency(
                        m as u64, n as u64, &old_root, &other, &proof
                    ));
                    if let Some(first) = proof.first() {
                        let mut bad = proof.clone();
                        bad[0] = node(first, first);
                        assert!(!verify_consistency(
                            m as u64, n as u64, &old_root, &new_root, &bad
                        ));
                    }
                }
                // Every new leaf's audit path, from the frontier of m and the new leaves.
                for i in m..n {
                    let p = audit_path_after(m as u64, &frontier, &leaves[m..n], i as u64)
                        .expect("path");
                    assert_eq!(p, audit_path(&leaves[..n], i), "m = {m}, n = {n}, i = {i}");
                }
            }
        }
    }

    #[test]
    fn consistency_proofs_match_the_rfc_6962_example_tree() {
        // RFC 6962 2.1.3: the tree of 7 leaves d0..d6 (a..f their leaf hashes and j d6's;
        // g = (a, b), h = (c, d), i = (e, f), k = (g, h), l = (i, j)):
        // PROOF(3, D[7]) = [c, d, g, l], PROOF(4, D[7]) = [l], PROOF(6, D[7]) = [i, j, k].
        let d: Vec<Hash> = (0..7u8).map(|i| leaf(&[i])).collect();
        let g = node(&d[0], &d[1]);
        let h = node(&d[2], &d[3]);
        let i = node(&d[4], &d[5]);
        let j = d[6];
        let k = node(&g, &h);
        let l = node(&i, &j);
        let proof = |m: usize| {
            consistency_proof(m as u64, &frontier_extend(&[], 0, &d[..m]), &d[m..]).expect("p")
        };
        assert_eq!(proof(3), vec![d[2], d[3], g, l]);
        assert_eq!(proof(4), vec![l]);
        assert_eq!(proof(6), vec![i, j, k]);
        let whole = node(&k, &l);
        assert_eq!(root(&d), whole);
        for m in [3usize, 4, 6] {
            assert!(verify_consistency(
                m as u64,
                7,
                &root(&d[..m]),
                &whole,
                &proof(m)
            ));
        }
    }
}
