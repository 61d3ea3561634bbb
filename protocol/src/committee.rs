//! The fixed set of replicas and the quorum arithmetic.

use crate::ids::{NodeId, View};
use bftd_crypto::{PublicKey, ValidatedKey};

/// Why a committee could not be formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitteeError {
    /// PBFT needs `n = 3f + 1` replicas to tolerate `f` faults.
    #[error("a committee needs n = 3f + 1 members (1, 4, 7, 10, ...); got {n}")]
    BadSize {
        /// The number of members given.
        n: usize,
    },
    /// Two members share a key: one machine would count twice in a quorum.
    #[error("members {first} and {second} have the same public key")]
    DuplicateKey {
        /// The first member with the key.
        first: NodeId,
        /// The second.
        second: NodeId,
    },
    /// A member's key is not a valid (non-weak) Ed25519 key.
    #[error("member {member} has an invalid Ed25519 public key")]
    InvalidKey {
        /// The member.
        member: NodeId,
    },
}

/// The replicas `0..n` and their keys. `n = 3f + 1`.
#[derive(Clone, Debug)]
pub struct Committee {
    members: Vec<ValidatedKey>,
    f: usize,
}

impl Committee {
    /// A committee of the given keys, replica `i` holding `keys[i]`.
    pub fn new(keys: &[PublicKey]) -> Result<Committee, CommitteeError> {
        let n = keys.len();
        if n == 0 || n % 3 != 1 || n > usize::from(u16::MAX) {
            return Err(CommitteeError::BadSize { n });
        }
        let mut members = Vec::with_capacity(n);
        for (index, key) in keys.iter().enumerate() {
            let member = NodeId(index as u16);
            if let Some(first) = keys.iter().take(index).position(|other| other == key) {
                return Err(CommitteeError::DuplicateKey {
                    first: NodeId(first as u16),
                    second: member,
                });
            }
            members.push(
                key.validate()
                    .map_err(|_| CommitteeError::InvalidKey { member })?,
            );
        }
        Ok(Committee {
            members,
            f: (n - 1) / 3,
        })
    }

    /// Number of replicas.
    pub fn n(&self) -> usize {
        self.members.len()
    }

    /// Number of faulty replicas tolerated.
    pub fn f(&self) -> usize {
        self.f
    }

    /// `2f + 1`: any two quorums share at least one honest replica.
    pub fn quorum(&self) -> usize {
        2 * self.f + 1
    }

    /// `f + 1`: any such set contains at least one honest replica.
    pub fn weak_quorum(&self) -> usize {
        self.f + 1
    }

    /// The primary of `view`: `view mod n`.
    pub fn primary(&self, view: View) -> NodeId {
        NodeId((view.0 % self.members.len() as u64) as u16)
    }

    /// Whether `id` is a member.
    pub fn contains(&self, id: NodeId) -> bool {
        id.index() < self.members.len()
    }

    /// The validated key of `id`.
    pub fn key(&self, id: NodeId) -> Option<&ValidatedKey> {
        self.members.get(id.index())
    }

    /// The member holding `key`, if any.
    pub fn member_with_key(&self, key: &PublicKey) -> Option<NodeId> {
        self.members
            .iter()
            .position(|member| member.public() == *key)
            .map(|index| NodeId(index as u16))
    }

    /// All member ids, in order.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.members.len()).map(|index| NodeId(index as u16))
    }

    /// All members' public keys, in order.
    pub fn public_keys(&self) -> Vec<PublicKey> {
        self.members.iter().map(ValidatedKey::public).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bftd_crypto::KeyPair;
    use proptest::prelude::*;

    fn keys(n: usize) -> Vec<PublicKey> {
        (0..n)
            .map(|i| KeyPair::from_seed([i as u8 + 1; 32]).public())
            .collect()
    }

    proptest! {
        /// Only sizes 3f+1 form committees; two quorums intersect in at least
        /// f + 1 replicas (so in an honest one); a quorum survives f silent
        /// replicas; a weak quorum always holds an honest replica; and the
        /// primary rotates over all members.
        #[test]
        fn committee_sizes(n in 1usize..40) {
            let result = Committee::new(&keys(n));
            if n % 3 == 1 {
                let committee = result.unwrap();
                prop_assert_eq!(committee.n(), n);
                prop_assert_eq!(committee.quorum(), 2 * committee.f() + 1);
                prop_assert_eq!(3 * committee.f() + 1, n);
                let (q, f) = (committee.quorum(), committee.f());
                prop_assert!(2 * q - n > f, "quorums intersect in at least f + 1");
                prop_assert!(n - f >= q);
                prop_assert!(committee.weak_quorum() > f);
                let primaries: std::collections::BTreeSet<_> =
                    (0..n as u64).map(|v| committee.primary(View(v))).collect();
                prop_assert_eq!(primaries.len(), n);
            } else {
                prop_assert_eq!(result.unwrap_err(), CommitteeError::BadSize { n });
            }
        }
    }

    /// A repeated key is refused, naming both members.
    #[test]
    fn duplicate_keys_refused() {
        let mut k = keys(4);
        k[3] = k[1];
        assert_eq!(
            Committee::new(&k).unwrap_err(),
            CommitteeError::DuplicateKey {
                first: NodeId(1),
                second: NodeId(3)
            }
        );
    }
}
