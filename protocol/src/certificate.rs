//! Quorum certificates: prepared, commit and checkpoint.
//!
//! A certificate is one value and the signatures of distinct replicas on it.
//! Votes are stored sorted by signer, so "distinct" is a strictly increasing
//! check and every certificate has one canonical encoding.
//!
//! Two levels of checking:
//! - `check(&committee)`: structure: quorum size, distinct members, values
//!   that match. The replica uses this after the shell has verified every
//!   signature (see [`crate::verify`]).
//! - `verify(&committee)`: structure *and* every signature. For integrators
//!   and checkers that hold nothing but the committee's public keys.

use crate::committee::Committee;
use crate::ids::{NodeId, SeqNum, View};
use crate::message::{Checkpoint, Commit, PrePrepare, Prepare, Signable, Signed};
use crate::verify::{self, SignatureCollector};
use bftd_crypto::{Digest, Signature};
use serde::{Deserialize, Serialize};

/// Why a certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// Fewer votes than the rule requires.
    #[error("{got} votes, {needed} needed")]
    TooFewVotes {
        /// Votes required.
        needed: usize,
        /// Votes present.
        got: usize,
    },
    /// A vote from a replica that is not in the committee.
    #[error("vote from {signer}, who is not a committee member")]
    UnknownSigner {
        /// The claimed signer.
        signer: NodeId,
    },
    /// Votes must be from distinct replicas, sorted by id.
    #[error("vote from {signer} repeated or out of order")]
    DuplicateSigner {
        /// The repeated signer.
        signer: NodeId,
    },
    /// A prepared certificate's prepares must come from backups.
    #[error("the primary {primary} cannot vote prepare in its own view")]
    PrimaryPrepared {
        /// The primary.
        primary: NodeId,
    },
    /// The pre-prepare was not signed by the view's primary.
    #[error("pre-prepare signed by {got}, but the primary of that view is {expected}")]
    WrongPrimary {
        /// The view's primary.
        expected: NodeId,
        /// The signer.
        got: NodeId,
    },
    /// The prepares are for another view, sequence or digest than the
    /// pre-prepare.
    #[error("prepares do not match the pre-prepare")]
    PreparesMismatch,
    /// The genesis checkpoint (sequence 0) carries no votes and the zero hash.
    #[error("malformed genesis checkpoint")]
    BadGenesis,
    /// The certificate is for another sequence or digest than expected.
    #[error(
        "certificate is for {got_seq}/{got_digest:#}, expected {expected_seq}/{expected_digest:#}"
    )]
    WrongValue {
        /// Expected sequence.
        expected_seq: SeqNum,
        /// Expected digest.
        expected_digest: Digest,
        /// Certified sequence.
        got_seq: SeqNum,
        /// Certified digest.
        got_digest: Digest,
    },
    /// A signature does not verify.
    #[error("a signature in the certificate does not verify")]
    BadSignature,
}

/// One replica's signature in a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// The voter.
    pub signer: NodeId,
    /// Its signature over the certificate's value.
    pub signature: Signature,
}

/// A value and the votes of distinct replicas on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumCertificate<T> {
    /// The value every vote signs.
    pub value: T,
    /// Votes, sorted by signer, distinct. Decoding refuses any other order
    /// at the first vote out of it (see [`distinct_votes`]).
    #[serde(deserialize_with = "distinct_votes")]
    pub votes: Vec<Vote>,
}

/// Votes the decoder allocates room for before it has read them (the count
/// on the wire is the sender's word).
const VOTES_PREALLOCATED: usize = 64;

/// Decodes a certificate's votes, refusing at the first vote whose signer
/// is not above the one before. Every certificate keeps its signers sorted
/// and distinct (`check` refuses others), so this refuses nothing an honest
/// replica sends; what it changes is when: a frame of one valid vote
/// repeated 800,000 times (the `huge-certificate` attack, 60 MB) used to be
/// decoded whole, 800,000 votes allocated, before its shape was checked;
/// now decoding stops at the second vote. It also bounds a certificate at
/// one vote per possible signer (65,536) whatever its frame's size.
fn distinct_votes<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Vote>, D::Error> {
    struct Votes;

    impl<'de> serde::de::Visitor<'de> for Votes {
        type Value = Vec<Vote>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("votes sorted by distinct signer")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<Vote>, A::Error> {
            let room = seq.size_hint().unwrap_or(0).min(VOTES_PREALLOCATED);
            let mut votes: Vec<Vote> = Vec::with_capacity(room);
            while let Some(vote) = seq.next_element::<Vote>()? {
                if votes.last().is_some_and(|last| last.signer >= vote.signer) {
                    return Err(serde::de::Error::custom(
                        "certificate votes are not sorted by distinct signer",
                    ));
                }
                votes.push(vote);
            }
            Ok(votes)
        }
    }

    deserializer.deserialize_seq(Votes)
}

impl<T: Signable + Clone + PartialEq> QuorumCertificate<T> {
    /// A certificate from signed copies of `value`; copies of other values
    /// are skipped, and the votes come out sorted and distinct.
    pub fn collect<'a>(value: T, signed: impl IntoIterator<Item = &'a Signed<T>>) -> Self
    where
        T: 'a,
    {
        let mut votes: Vec<Vote> = signed
            .into_iter()
            .filter(|s| s.value == value)
            .map(|s| Vote {
                signer: s.signer,
                signature: s.signature,
            })
            .collect();
        votes.sort_by_key(|vote| vote.signer);
        votes.dedup_by_key(|vote| vote.signer);
        QuorumCertificate { value, votes }
    }

    /// The signed messages this certificate stands for.
    pub fn signed(&self) -> impl Iterator<Item = Signed<T>> + '_ {
        self.votes.iter().map(|vote| Signed {
            signer: vote.signer,
            value: self.value.clone(),
            signature: vote.signature,
        })
    }

    /// Votes are distinct, sorted committee members, at least `needed` of
    /// them, and none from `excluded`.
    fn check_votes(
        &self,
        committee: &Committee,
        needed: usize,
        excluded: Option<NodeId>,
    ) -> Result<(), CertificateError> {
        let mut previous: Option<NodeId> = None;
        for vote in &self.votes {
            if !committee.contains(vote.signer) {
                return Err(CertificateError::UnknownSigner {
                    signer: vote.signer,
                });
            }
            if previous.is_some_and(|p| p >= vote.signer) {
                return Err(CertificateError::DuplicateSigner {
                    signer: vote.signer,
                });
            }
            if excluded == Some(vote.signer) {
                return Err(CertificateError::PrimaryPrepared {
                    primary: vote.signer,
                });
            }
            previous = Some(vote.signer);
        }
        if self.votes.len() < needed {
            return Err(CertificateError::TooFewVotes {
                needed,
                got: self.votes.len(),
            });
        }
        Ok(())
    }

    pub(crate) fn collect_signatures(&self, collector: &mut SignatureCollector<'_>) {
        collector.add_votes(&self.value, &self.votes);
    }
}

/// 2f+1 commits on `(v, s, d)`: proof that `d` is decided at `s`.
pub type CommitCertificate = QuorumCertificate<Commit>;

/// 2f+1 checkpoints on `(s, block_hash)`: a stable checkpoint.
pub type CheckpointCertificate = QuorumCertificate<Checkpoint>;

impl CommitCertificate {
    /// Quorum of distinct members.
    pub fn check(&self, committee: &Committee) -> Result<(), CertificateError> {
        self.check_votes(committee, committee.quorum(), None)
    }

    /// [`Self::check`] plus every signature; and that it certifies `seq` and
    /// `digest`.
    pub fn verify_for(
        &self,
        committee: &Committee,
        seq: SeqNum,
        digest: Digest,
    ) -> Result<(), CertificateError> {
        if self.value.seq != seq || self.value.digest != digest {
            return Err(CertificateError::WrongValue {
                expected_seq: seq,
                expected_digest: digest,
                got_seq: self.value.seq,
                got_digest: self.value.digest,
            });
        }
        self.check(committee)?;
        verify::verify_all(committee, |collector| self.collect_signatures(collector))
            .map_err(|_| CertificateError::BadSignature)
    }
}

impl CheckpointCertificate {
    /// The certificate every replica starts from: sequence 0, zero hash, no
    /// votes needed.
    pub fn genesis() -> CheckpointCertificate {
        QuorumCertificate {
            value: Checkpoint {
                seq: SeqNum(0),
                block_hash: Digest::ZERO,
            },
            votes: Vec::new(),
        }
    }

    /// The checkpoint's sequence number.
    pub fn seq(&self) -> SeqNum {
        self.value.seq
    }

    /// Genesis, or a quorum of distinct members.
    pub fn check(&self, committee: &Committee) -> Result<(), CertificateError> {
        if self.value.seq == SeqNum(0) {
            if self.value.block_hash != Digest::ZERO || !self.votes.is_empty() {
                return Err(CertificateError::BadGenesis);
            }
            return Ok(());
        }
        self.check_votes(committee, committee.quorum(), None)
    }

    /// [`Self::check`] plus every signature.
    pub fn verify(&self, committee: &Committee) -> Result<(), CertificateError> {
        self.check(committee)?;
        verify::verify_all(committee, |collector| self.collect_signatures(collector))
            .map_err(|_| CertificateError::BadSignature)
    }
}

/// A pre-prepare from the view's primary and 2f matching prepares from
/// distinct backups: `d` is prepared at `(v, s)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedCertificate {
    /// The primary's pre-prepare.
    pub pre_prepare: Signed<PrePrepare>,
    /// 2f prepares on the same `(v, s, d)`.
    pub prepares: QuorumCertificate<Prepare>,
}

impl PreparedCertificate {
    /// The view it was prepared in.
    pub fn view(&self) -> View {
        self.pre_prepare.value.view
    }

    /// The sequence number.
    pub fn seq(&self) -> SeqNum {
        self.pre_prepare.value.seq
    }

    /// The batch digest.
    pub fn digest(&self) -> Digest {
        self.pre_prepare.value.digest
    }

    /// Signed by the right primary, 2f distinct backups, values matching.
    pub fn check(&self, committee: &Committee) -> Result<(), CertificateError> {
        let pre_prepare = &self.pre_prepare.value;
        let primary = committee.primary(pre_prepare.view);
        if self.pre_prepare.signer != primary {
            return Err(CertificateError::WrongPrimary {
                expected: primary,
                got: self.pre_prepare.signer,
            });
        }
        let prepare = &self.prepares.value;
        if prepare.view != pre_prepare.view
            || prepare.seq != pre_prepare.seq
            || prepare.digest != pre_prepare.digest
        {
            return Err(CertificateError::PreparesMismatch);
        }
        self.prepares
            .check_votes(committee, 2 * committee.f(), Some(primary))
    }

    /// [`Self::check`] plus every signature.
    pub fn verify(&self, committee: &Committee) -> Result<(), CertificateError> {
        self.check(committee)?;
        verify::verify_all(committee, |collector| self.collect_signatures(collector))
            .map_err(|_| CertificateError::BadSignature)
    }

    pub(crate) fn collect_signatures(&self, collector: &mut SignatureCollector<'_>) {
        collector.add_signed(&self.pre_prepare);
        self.prepares.collect_signatures(collector);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use bftd_crypto::KeyPair;

    fn vote(signer: u16, value: Checkpoint) -> Vote {
        let key = KeyPair::from_seed([signer as u8; 32]);
        let signed = Signed::sign(NodeId(signer), value, &key).unwrap();
        Vote {
            signer: signed.signer,
            signature: signed.signature,
        }
    }

    /// A certificate of one vote repeated 100,000 times (the
    /// `huge-certificate` attack's shape, smaller) is refused while it is
    /// decoded, at its second vote; signers out of order are refused too;
    /// an honest certificate decodes as it was.
    #[test]
    fn votes_out_of_order_are_refused_while_decoding() {
        let value = Checkpoint {
            seq: SeqNum(64),
            block_hash: Digest([5; 32]),
        };
        let honest = QuorumCertificate {
            value,
            votes: (0..3).map(|signer| vote(signer, value)).collect(),
        };
        let bytes = codec::encode(&honest).unwrap();
        let decoded: QuorumCertificate<Checkpoint> = codec::decode(&bytes).unwrap();
        assert_eq!(decoded, honest);

        let repeated = QuorumCertificate {
            value,
            votes: vec![vote(1, value); 100_000],
        };
        let bytes = codec::encode(&repeated).unwrap();
        let started = std::time::Instant::now();
        let result = codec::decode::<QuorumCertificate<Checkpoint>>(&bytes);
        println!(
            "{} bytes of one repeated vote: {:?} in {:?}",
            bytes.len(),
            result.as_ref().map(|c| c.votes.len()),
            started.elapsed()
        );
        assert!(
            result.is_err(),
            "a certificate of one repeated vote decoded"
        );

        let backwards = QuorumCertificate {
            value,
            votes: (0..3).rev().map(|signer| vote(signer, value)).collect(),
        };
        let bytes = codec::encode(&backwards).unwrap();
        assert!(codec::decode::<QuorumCertificate<Checkpoint>>(&bytes).is_err());
    }
}
