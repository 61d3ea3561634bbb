//! Domain separation, strict verification and batch verification.

use crate::keys::{Signature, ValidatedKey};
use ed25519_dalek::VerifyingKey;

/// A domain tag: names the protocol version and message kind a signature or
/// digest is for (for example `bftd/v1/prepare`). At most 255 bytes.
///
/// Digests are SHA-256 of `len(tag) as u8 || tag || message`; the length
/// prefix makes the split between tag and message unambiguous. Signatures
/// are Ed25519 over that digest (see [`Domain::signing_bytes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Domain(&'static str);

impl Domain {
    /// A domain tag. Panics at compile time (tags are constants) if the tag is
    /// longer than 255 bytes.
    pub const fn new(tag: &'static str) -> Domain {
        assert!(tag.len() <= 255, "domain tags are at most 255 bytes");
        Domain(tag)
    }

    /// The tag text.
    pub fn tag(&self) -> &'static str {
        self.0
    }

    pub(crate) fn write_prefix(&self, mut write: impl FnMut(&[u8])) {
        // `new` guarantees the length fits in a byte.
        write(&[self.0.len() as u8]);
        write(self.0.as_bytes());
    }

    /// The exact bytes a signature covers: the 32-byte digest of the message
    /// under this domain, `SHA-256(len(tag) || tag || message)`.
    ///
    /// Ed25519 hashes what it signs twice with SHA-512 (and verification
    /// once more); signing the digest instead makes that a constant 32 bytes
    /// and leaves one SHA-256 pass over the message, which this machine's
    /// SHA extensions do about three times as fast as SHA-512. A 300 kB
    /// forwarded batch was 8 % of a node's CPU to sign (design-notes §15).
    /// Signatures still bind the domain and every message byte: the digest
    /// is collision resistant.
    pub fn signing_bytes(&self, message: &[u8]) -> [u8; 32] {
        crate::Digest::of(*self, message).0
    }
}

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The signature does not verify under the key for these bytes.
    #[error("signature does not verify")]
    Invalid,
    /// The public key is not a valid, non-weak Ed25519 key.
    #[error("invalid public key")]
    InvalidKey,
}

pub(crate) fn verify_strict(
    key: &VerifyingKey,
    signing_bytes: &[u8],
    signature: &Signature,
) -> Result<(), SignatureError> {
    let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
    key.verify_strict(signing_bytes, &signature)
        .map_err(|_| SignatureError::Invalid)
}

/// One signature to check: the key, the exact signed bytes (the message's
/// domain-separated digest) and the signature.
#[derive(Clone, Debug)]
pub struct SignatureCheck {
    /// The signer's validated key.
    pub key: ValidatedKey,
    /// `Domain::signing_bytes(message)`.
    pub signing_bytes: [u8; 32],
    /// The signature to check.
    pub signature: Signature,
}

impl SignatureCheck {
    /// A check of `signature` by `key` over `message` under `domain` (its
    /// domain-separated digest).
    pub fn new(
        key: ValidatedKey,
        domain: Domain,
        message: &[u8],
        signature: Signature,
    ) -> SignatureCheck {
        SignatureCheck {
            key,
            signing_bytes: domain.signing_bytes(message),
            signature,
        }
    }

    /// A digest naming this check (key, signed bytes and signature), for
    /// caches of checks that passed: two checks with one fingerprint are
    /// the same check.
    pub fn fingerprint(&self) -> crate::Digest {
        const FINGERPRINT: Domain = Domain::new("bftd/v1/signature-check");
        let mut builder = crate::DigestBuilder::new(FINGERPRINT);
        builder
            .update(&self.key.public().0)
            .update(&self.signing_bytes)
            .update(&self.signature.0);
        builder.finish()
    }

    /// Verifies this one signature strictly.
    pub fn verify(&self) -> Result<(), SignatureError> {
        verify_strict(&self.key.0, &self.signing_bytes, &self.signature)
    }
}

/// Verifies many signatures at once. Returns `Ok` when all are valid, or the
/// indices of the invalid ones.
///
/// Batch verification costs about a third less per signature than one-by-one
/// (see BENCHMARKS.md). It is not as strict as `verify_strict` about
/// small-order components of a signature, so:
/// - keys are validated (non-weak) before they reach a [`SignatureCheck`];
/// - when a batch fails, every member is re-checked with `verify_strict` to
///   name the culprits.
///
/// What remains is that a batch may accept a signature whose `R` has a
/// small-order component. That is malleability, not forgery: producing such a
/// signature still requires the secret key, so it cannot make a node accept a
/// message its signer did not sign.
pub fn verify_batch(checks: &[SignatureCheck]) -> Result<(), Vec<usize>> {
    let failed = || -> Vec<usize> {
        checks
            .iter()
            .enumerate()
            .filter(|(_, check)| check.verify().is_err())
            .map(|(index, _)| index)
            .collect()
    };
    match checks {
        [] => Ok(()),
        [single] => single.verify().map_err(|_| vec![0]),
        _ => {
            let messages: Vec<&[u8]> = checks.iter().map(|c| c.signing_bytes.as_slice()).collect();
            let signatures: Vec<ed25519_dalek::Signature> = checks
                .iter()
                .map(|c| ed25519_dalek::Signature::from_bytes(&c.signature.0))
                .collect();
            let keys: Vec<VerifyingKey> = checks.iter().map(|c| c.key.0).collect();
            match ed25519_dalek::verify_batch(&messages, &signatures, &keys) {
                Ok(()) => Ok(()),
                Err(_) => {
                    let invalid = failed();
                    if invalid.is_empty() {
                        // The batch equation failed but every signature passes
                        // strict verification on its own: accept, as the strict
                        // single check is the reference.
                        Ok(())
                    } else {
                        Err(invalid)
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyPair;
    use proptest::prelude::*;

    const TEST: Domain = Domain::new("test/v1/batch");

    fn checks(count: usize) -> Vec<SignatureCheck> {
        (0..count)
            .map(|i| {
                let key = KeyPair::from_seed([i as u8; 32]);
                let message = format!("message {i}");
                let signature = key.sign(TEST, message.as_bytes());
                SignatureCheck::new(
                    key.public().validate().unwrap(),
                    TEST,
                    message.as_bytes(),
                    signature,
                )
            })
            .collect()
    }

    /// A batch of valid signatures verifies; an empty batch is trivially valid.
    #[test]
    fn valid_batches() {
        assert_eq!(verify_batch(&[]), Ok(()));
        assert_eq!(verify_batch(&checks(1)), Ok(()));
        assert_eq!(verify_batch(&checks(17)), Ok(()));
    }

    proptest! {
        /// Any set of corrupted members is reported exactly, whatever the
        /// batch size and whichever byte of the signature was flipped.
        #[test]
        fn batch_names_exactly_the_bad_signatures(
            size in 1usize..12,
            bad in proptest::collection::btree_set(0usize..12, 0..4),
            byte in 0usize..64,
        ) {
            let mut batch = checks(size);
            let bad: Vec<usize> = bad.into_iter().filter(|&i| i < size).collect();
            for &i in &bad {
                batch[i].signature.0[byte] ^= 0x40;
            }
            let result = verify_batch(&batch);
            if bad.is_empty() {
                prop_assert_eq!(result, Ok(()));
            } else {
                prop_assert_eq!(result, Err(bad));
            }
        }
    }

    /// The domain prefix separates tag and message unambiguously: moving bytes
    /// between tag and message changes the signed bytes.
    #[test]
    fn domain_prefix_is_unambiguous() {
        let a = Domain::new("ab").signing_bytes(b"c");
        let b = Domain::new("a").signing_bytes(b"bc");
        assert_ne!(a, b);
    }
}
