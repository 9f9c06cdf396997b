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
}
