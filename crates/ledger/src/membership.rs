//! Membership changes (ENTRY_KIND_MEMBERSHIP): a change adds or removes gateways, operators
//! and observers, approved by the signatures of a quorum (2f+1) of the genesis validators,
//! and logged by an operator or a validator. The membership in force is the genesis one with
//! every certified change applied in the order they were proposed. The validator set itself
//! never changes this way (a quorum is counted over it): changing it is a new genesis.
//!
//! Pure: no store, no clock. The ledger node's `state` applies the changes a node stores; settlement
//! applies those certified before its period's end.

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use gridgate_proto::v1 as pb;
use prost::Message;

use crate::entry::{Member, Members};
use gridgate_core::Identity;

/// Why a membership change does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// Not decodable, or a field is wrong.
    #[error("membership change: {0}")]
    Malformed(String),
    /// Too few distinct validators approved it with a good signature.
    #[error("membership change {id:?}: {have} valid validator approvals, {need} needed")]
    NoQuorum {
        /// The change.
        id: String,
        /// Valid distinct approvals.
        have: usize,
        /// The quorum.
        need: usize,
    },
    /// Logged by a member that may not log membership changes.
    #[error("membership change logged by {0:?}: only an operator or a validator logs them")]
    WrongOrigin(String),
}

/// Decodes a change and checks its fields (not its approvals).
pub fn decode_change(bytes: &[u8]) -> Result<pb::MembershipChange, ChangeError> {
    let c = pb::MembershipChange::decode(bytes)
        .map_err(|e| ChangeError::Malformed(format!("not a MembershipChange: {e}")))?;
    if !gridgate_core::names::valid_name(&c.id) {
        return Err(ChangeError::Malformed(format!(
            "id {:?}: use letters, digits, '-', '_' or '.'",
            c.id
        )));
    }
    if c.add.is_empty() && c.remove.is_empty() {
        return Err(ChangeError::Malformed(format!(
            "{:?} neither adds nor removes anyone",
            c.id
        )));
    }
    for a in &c.add {
        if !gridgate_core::names::valid_name(&a.id) {
            return Err(ChangeError::Malformed(format!("member id {:?}", a.id)));
        }
        match pb::MemberRole::try_from(a.role) {
            Ok(pb::MemberRole::Gateway | pb::MemberRole::Operator | pb::MemberRole::Observer) => {}
            Ok(pb::MemberRole::Validator) => {
                return Err(ChangeError::Malformed(format!(
                    "{:?} would be a validator: the validator set changes only with a new genesis",
                    a.id
                )));
            }
            _ => return Err(ChangeError::Malformed(format!("{:?} has no role", a.id))),
        }
        key_of(a)?;
    }
    Ok(c)
}

fn key_of(a: &pb::MemberRecord) -> Result<VerifyingKey, ChangeError> {
    let bytes: [u8; 32] = a
        .public_key
        .as_slice()
        .try_into()
        .map_err(|_| ChangeError::Malformed(format!("{:?}: a public key is 32 bytes", a.id)))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| ChangeError::Malformed(format!("{:?}: not an Ed25519 public key", a.id)))
}

/// Checks a signed change against `members` (whose validators approve): its fields, no
/// removal of a validator, and approvals of a quorum of distinct validators.
pub fn check_change(
    signed: &pb::SignedMembershipChange,
    members: &Members,
) -> Result<pb::MembershipChange, ChangeError> {
    let change = decode_change(&signed.change)?;
    if let Some(v) = change.remove.iter().find(|r| {
        members
            .0
            .get(*r)
            .is_some_and(|m| m.role == pb::MemberRole::Validator)
    }) {
        return Err(ChangeError::Malformed(format!(
            "{v:?} is a validator: the validator set changes only with a new genesis"
        )));
    }
    let validators = members.validators();
    let mut approved = std::collections::BTreeSet::new();
    for a in &signed.approvals {
        if !validators.contains(a.validator.as_str()) {
            continue;
        }
        let Some(m) = members.0.get(&a.validator) else {
            continue;
        };
        let good = Signature::from_slice(&a.signature)
            .is_ok_and(|s| m.key.verify(&approval_message(&signed.change), &s).is_ok());
        if good {
            approved.insert(a.validator.as_str());
        }
    }
    let need = members.quorum();
    if approved.len() < need {
        return Err(ChangeError::NoQuorum {
            id: change.id,
            have: approved.len(),
            need,
        });
    }
    Ok(change)
}

/// Checks a membership entry: logged by an operator or a validator, and a change that holds.
pub fn check_entry_payload(
    entry: &pb::Entry,
    members: &Members,
) -> Result<pb::MembershipChange, ChangeError> {
    let logger_ok = members.0.get(&entry.origin).is_some_and(|m| {
        !m.removed && matches!(m.role, pb::MemberRole::Operator | pb::MemberRole::Validator)
    });
    if !logger_ok {
        return Err(ChangeError::WrongOrigin(entry.origin.clone()));
    }
    let signed = pb::SignedMembershipChange::decode(entry.payload.as_slice())
        .map_err(|e| ChangeError::Malformed(format!("not a SignedMembershipChange: {e}")))?;
    check_change(&signed, members)
}

/// What an approval signs: a fixed prefix, then the change's bytes. The key that approves also
/// signs votes and entries; the prefix keeps an approval from ever being one of those.
fn approval_message(change: &[u8]) -> Vec<u8> {
    let mut m = APPROVAL_DOMAIN.to_vec();
    m.extend_from_slice(change);
    m
}

/// The prefix of what an approval signs.
pub const APPROVAL_DOMAIN: &[u8] = b"gridgate.v1 membership approval\0";

/// A validator's approval of the change `bytes` (an encoded `MembershipChange`).
pub fn approve(bytes: &[u8], validator: &str, key: &Identity) -> pb::Approval {
    pb::Approval {
        validator: validator.to_string(),
        signature: key.sign(&approval_message(bytes)).to_vec(),
    }
}

/// The membership after `changes` (checked ones) on top of `genesis`, applied in the order
/// they were proposed (then by id), each once. A removed member keeps its key, so that what
/// it logged before can still be checked, but is no longer voted for.
pub fn apply<'a>(
    genesis: &Members,
    changes: impl IntoIterator<Item = &'a pb::MembershipChange>,
) -> Members {
    let mut sorted: Vec<&pb::MembershipChange> = changes.into_iter().collect();
    sorted.sort_by(|a, b| (a.proposed_ms, &a.id).cmp(&(b.proposed_ms, &b.id)));
    sorted.dedup_by(|a, b| a.id == b.id);
    let mut out = genesis.clone();
    for c in sorted {
        for a in &c.add {
            let Ok(key) = key_of(a) else { continue };
            let Ok(role) = pb::MemberRole::try_from(a.role) else {
                continue;
            };
            if out
                .0
                .get(&a.id)
                .is_some_and(|m| m.role == pb::MemberRole::Validator)
            {
                continue;
            }
            out.0.insert(
                a.id.clone(),
                Member {
                    id: a.id.clone(),
                    role,
                    key,
                    removed: false,
                },
            );
        }
        for r in &c.remove {
            if let Some(m) = out.0.get_mut(r)
                && m.role != pb::MemberRole::Validator
            {
                m.removed = true;
            }
        }
    }
    out
}

/// The certified membership changes among `entries` (decoded), checked against `genesis`.
pub fn changes_in<'a>(
    entries: impl IntoIterator<Item = &'a pb::Entry>,
    genesis: &Members,
) -> Vec<pb::MembershipChange> {
    entries
        .into_iter()
        .filter(|e| e.kind == pb::EntryKind::Membership as i32)
        .filter_map(|e| check_entry_payload(e, genesis).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct World {
        members: Members,
        validators: Vec<Identity>,
    }

    fn world() -> World {
        let mut members = Members::default();
        let mut validators = Vec::new();
        for i in 0..4 {
            let k = Identity::generate().expect("key");
            let id = format!("v{i}");
            members.0.insert(
                id.clone(),
                Member {
                    id,
                    role: pb::MemberRole::Validator,
                    key: k.public(),
                    removed: false,
                },
            );
            validators.push(k);
        }
        let op = Identity::generate().expect("key");
        members.0.insert(
            "op".into(),
            Member {
                id: "op".into(),
                role: pb::MemberRole::Operator,
                key: op.public(),
                removed: false,
            },
        );
        World {
            members,
            validators,
        }
    }

    fn change(add: &[(&str, pb::MemberRole, &Identity)], remove: &[&str]) -> Vec<u8> {
        pb::MembershipChange {
            id: "c1".into(),
            add: add
                .iter()
                .map(|(id, role, k)| pb::MemberRecord {
                    id: id.to_string(),
                    role: *role as i32,
                    public_key: k.public().to_bytes().to_vec(),
                })
                .collect(),
            remove: remove.iter().map(|s| s.to_string()).collect(),
            proposed_ms: 1000,
        }
        .encode_to_vec()
    }

    fn signed(w: &World, bytes: Vec<u8>, approvers: &[usize]) -> pb::SignedMembershipChange {
        pb::SignedMembershipChange {
            approvals: approvers
                .iter()
                .map(|i| approve(&bytes, &format!("v{i}"), &w.validators[*i]))
                .collect(),
            change: bytes,
        }
    }

    #[test]
    fn a_change_needs_a_quorum_of_distinct_validators_with_good_signatures() {
        let w = world();
        let gw = Identity::generate().expect("key");
        let bytes = change(&[("gw-9", pb::MemberRole::Gateway, &gw)], &[]);
        assert!(check_change(&signed(&w, bytes.clone(), &[0, 1, 2]), &w.members).is_ok());
        let two = check_change(&signed(&w, bytes.clone(), &[0, 1]), &w.members);
        assert!(matches!(
            two,
            Err(ChangeError::NoQuorum {
                have: 2,
                need: 3,
                ..
            })
        ));
        // The same validator three times is one approval.
        let same = check_change(&signed(&w, bytes.clone(), &[1, 1, 1]), &w.members);
        assert!(matches!(same, Err(ChangeError::NoQuorum { have: 1, .. })));
        // An approval of another change does not count for this one.
        let mut forged = signed(&w, bytes.clone(), &[0, 1]);
        let other = change(&[("gw-8", pb::MemberRole::Gateway, &gw)], &[]);
        forged
            .approvals
            .push(approve(&other, "v2", &w.validators[2]));
        assert!(matches!(
            check_change(&forged, &w.members),
            Err(ChangeError::NoQuorum { have: 2, .. })
        ));
    }

    #[test]
    fn an_approval_is_a_signature_over_the_prefixed_change_and_nothing_else() {
        let w = world();
        let gw = Identity::generate().expect("key");
        let bytes = change(&[("gw-9", pb::MemberRole::Gateway, &gw)], &[]);
        // Signatures of the bare change bytes (as a vote or an entry is signed) do not count.
        let bare = pb::SignedMembershipChange {
            approvals: (0..3)
                .map(|i| pb::Approval {
                    validator: format!("v{i}"),
                    signature: w.validators[i].sign(&bytes).to_vec(),
                })
                .collect(),
            change: bytes.clone(),
        };
        assert!(matches!(
            check_change(&bare, &w.members),
            Err(ChangeError::NoQuorum { have: 0, .. })
        ));
    }

    #[test]
    fn the_validator_set_does_not_change_by_a_membership_change() {
        let w = world();
        let k = Identity::generate().expect("key");
        let add_validator = change(&[("v9", pb::MemberRole::Validator, &k)], &[]);
        assert!(matches!(
            check_change(&signed(&w, add_validator, &[0, 1, 2, 3]), &w.members),
            Err(ChangeError::Malformed(_))
        ));
        let remove_validator = change(&[], &["v3"]);
        assert!(matches!(
            check_change(&signed(&w, remove_validator, &[0, 1, 2, 3]), &w.members),
            Err(ChangeError::Malformed(_))
        ));
    }

    #[test]
    fn changes_apply_in_proposal_order_and_a_removed_member_keeps_its_key() {
        let w = world();
        let gw = Identity::generate().expect("key");
        let add = pb::MembershipChange::decode(
            change(&[("gw-9", pb::MemberRole::Gateway, &gw)], &[]).as_slice(),
        )
        .expect("change");
        let mut remove =
            pb::MembershipChange::decode(change(&[], &["gw-9"]).as_slice()).expect("change");
        remove.id = "c2".into();
        remove.proposed_ms = 2000;
        // Given in either order, the addition comes first.
        for order in [[&remove, &add], [&add, &remove]] {
            let m = apply(&w.members, order);
            let gw9 = m.0.get("gw-9").expect("kept");
            assert!(gw9.removed);
            assert_eq!(gw9.key, gw.public());
        }
        let only_add = apply(&w.members, [&add]);
        assert!(!only_add.0["gw-9"].removed);
        assert_eq!(only_add.quorum(), 3);
    }

    #[test]
    fn only_an_operator_or_a_validator_logs_a_change() {
        let w = world();
        let gw = Identity::generate().expect("key");
        let payload = signed(
            &w,
            change(&[("gw-9", pb::MemberRole::Gateway, &gw)], &[]),
            &[0, 1, 2],
        )
        .encode_to_vec();
        let entry = |origin: &str| pb::Entry {
            origin: origin.into(),
            kind: pb::EntryKind::Membership as i32,
            payload: payload.clone(),
            ..Default::default()
        };
        assert!(check_entry_payload(&entry("op"), &w.members).is_ok());
        assert!(check_entry_payload(&entry("v1"), &w.members).is_ok());
        assert!(matches!(
            check_entry_payload(&entry("gw-9"), &w.members),
            Err(ChangeError::WrongOrigin(_))
        ));
    }
}
