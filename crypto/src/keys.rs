//! Identity keys and signatures.

use crate::verify::{Domain, SignatureError};
use ed25519_dalek::{SigningKey, VerifyingKey};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{LazyLock, Mutex};
use zeroize::Zeroizing;

/// Prefix of a secret key's text form, so a secret pasted where a public key
/// belongs (or the other way round) is recognised and refused.
const SECRET_PREFIX: &str = "bftd-secret-key:";

/// Errors from parsing keys, signatures and digests from text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyTextError {
    /// The text is not the expected number of hex digits.
    #[error("expected {expected_len} hex digits")]
    BadHex {
        /// How many hex digits were expected.
        expected_len: usize,
    },
    /// A secret key's text must start with `bftd-secret-key:`.
    #[error("a secret key starts with `{SECRET_PREFIX}`; this looks like something else")]
    MissingSecretPrefix,
    /// A public key's text must not be a secret key.
    #[error("this is a secret key, not a public key: never share it")]
    SecretWherePublicExpected,
    /// The bytes are not a valid Ed25519 public key (not a curve point, or a
    /// small-order point that would let anyone forge signatures).
    #[error("not a valid Ed25519 public key")]
    InvalidPublicKey,
}

/// Keys that passed validation lately: two generations of at most
/// [`RecentKeys::CAPACITY`] keys; when the newer fills, the older is
/// dropped. So the most recent `CAPACITY` keys are always remembered, memory
/// is bounded whatever keys arrive (a 32-byte key and its 192-byte
/// `VerifyingKey` each, about 2 MiB for both generations with the maps'
/// own), and a forgotten key is only decompressed again. Only keys that
/// passed are remembered: validity is a function of the 32 bytes alone, so
/// a remembered answer is the answer.
#[derive(Default)]
struct RecentKeys {
    newer: HashMap<PublicKey, VerifyingKey>,
    older: HashMap<PublicKey, VerifyingKey>,
}

static RECENT_KEYS: LazyLock<Mutex<RecentKeys>> = LazyLock::new(Mutex::default);

impl RecentKeys {
    const CAPACITY: usize = 4096;

    fn lock() -> std::sync::MutexGuard<'static, RecentKeys> {
        RECENT_KEYS.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(key: &PublicKey) -> Option<VerifyingKey> {
        let recent = Self::lock();
        recent
            .newer
            .get(key)
            .or_else(|| recent.older.get(key))
            .copied()
    }

    fn insert(key: PublicKey, validated: VerifyingKey) {
        let mut recent = Self::lock();
        if recent.newer.len() >= Self::CAPACITY {
            recent.older = std::mem::take(&mut recent.newer);
        }
        recent.newer.insert(key, validated);
    }
}

/// An Ed25519 public key: 32 bytes, exactly as on the wire.
///
/// Kept as bytes, not as a decompressed curve point: requests carry their
/// client's key and decompressing thousands of them per batch would cost more
/// than the rest of the batch. [`PublicKey::validate`] decompresses on
/// demand; committees keep their members' keys as [`ValidatedKey`]s.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; 32]);

crate::fixed_bytes::serde_as_bytes!(PublicKey, 32);

impl PublicKey {
    /// Decompresses and validates the key: a point on the curve and not of
    /// small order (a "weak" key, for which signatures are trivially forged).
    ///
    /// Decompressing costs a square root in the field (8.3 % of a primary's
    /// CPU at 40,000 tx/s before keys were remembered), and a node meets one
    /// client's key in every request of that client: so keys that passed lately are
    /// remembered, process-wide, and given back without decompressing
    /// again (see [`RecentKeys`]).
    pub fn validate(&self) -> Result<ValidatedKey, KeyTextError> {
        if let Some(key) = RecentKeys::get(self) {
            return Ok(ValidatedKey(key));
        }
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| KeyTextError::InvalidPublicKey)?;
        if key.is_weak() {
            return Err(KeyTextError::InvalidPublicKey);
        }
        RecentKeys::insert(*self, key);
        Ok(ValidatedKey(key))
    }

    /// Verifies `signature` over `message` under `domain` (its
    /// domain-separated digest) with strict rules
    /// (canonical encodings, no small-order components).
    pub fn verify(
        &self,
        domain: Domain,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), SignatureError> {
        let key = self.validate().map_err(|_| SignatureError::InvalidKey)?;
        key.verify(domain, message, signature)
    }

    /// The first 8 hex digits, for logs.
    pub fn short(&self) -> String {
        format!("{self:#}")
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = if f.alternate() { 4 } else { 32 };
        for byte in self.0.iter().take(shown) {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self:#})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyTextError;
    fn from_str(text: &str) -> Result<PublicKey, KeyTextError> {
        let text = text.trim();
        if text.starts_with(SECRET_PREFIX) {
            return Err(KeyTextError::SecretWherePublicExpected);
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes)
            .map_err(|_| KeyTextError::BadHex { expected_len: 64 })?;
        let key = PublicKey(bytes);
        key.validate()?;
        Ok(key)
    }
}

/// A public key that has been decompressed and checked: on the curve and not
/// of small order. Verifying with it skips the decompression.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ValidatedKey(pub(crate) VerifyingKey);

impl ValidatedKey {
    /// The key's wire form.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.to_bytes())
    }

    /// Verifies `signature` over `message` under `domain` (its
    /// domain-separated digest) with `verify_strict`.
    pub fn verify(
        &self,
        domain: Domain,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), SignatureError> {
        crate::verify::verify_strict(&self.0, &domain.signing_bytes(message), signature)
    }
}

impl fmt::Debug for ValidatedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ValidatedKey({:#})", self.public())
    }
}

/// An Ed25519 signature: 64 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature(")?;
        for byte in self.0.iter().take(4) {
            write!(f, "{byte:02x}")?;
        }
        write!(f, "..)")
    }
}

crate::fixed_bytes::serde_as_bytes!(Signature, 64);

/// A node's or client's identity key pair. The secret half is zeroized on
/// drop and never printed.
#[derive(Clone)]
pub struct KeyPair {
    secret: SigningKey,
    public: PublicKey,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "KeyPair {{ public: {:?}, secret: <redacted> }}",
            self.public
        )
    }
}

impl KeyPair {
    /// Generates a key from a cryptographically secure RNG supplied by the
    /// caller (the daemon passes the OS RNG; the simulator a seeded one).
    pub fn generate<R: rand_core::RngCore + rand_core::CryptoRng>(rng: &mut R) -> KeyPair {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        KeyPair::from_seed(*seed)
    }

    /// The key pair whose 32-byte secret seed is `seed`.
    pub fn from_seed(seed: [u8; 32]) -> KeyPair {
        let secret = SigningKey::from_bytes(&seed);
        let public = PublicKey(secret.verifying_key().to_bytes());
        KeyPair { secret, public }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// Signs `message` under `domain` (its domain-separated digest, see
    /// [`Domain::signing_bytes`]).
    pub fn sign(&self, domain: Domain, message: &[u8]) -> Signature {
        use ed25519_dalek::Signer as _;
        let bytes = domain.signing_bytes(message);
        Signature(self.secret.sign(&bytes).to_bytes())
    }

    /// The secret seed, for handing to TLS key encoders. Zeroized on drop.
    pub fn secret_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// Text form of the secret key: `bftd-secret-key:` and 64 hex digits.
    pub fn to_secret_text(&self) -> Zeroizing<String> {
        let seed = self.secret_seed();
        Zeroizing::new(format!("{SECRET_PREFIX}{}", hex::encode(seed.as_ref())))
    }

    /// Parses [`KeyPair::to_secret_text`]'s output; surrounding whitespace is
    /// ignored.
    pub fn from_secret_text(text: &str) -> Result<KeyPair, KeyTextError> {
        let digits = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(KeyTextError::MissingSecretPrefix)?;
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(digits, seed.as_mut())
            .map_err(|_| KeyTextError::BadHex { expected_len: 64 })?;
        Ok(KeyPair::from_seed(*seed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    const TEST: Domain = Domain::new("test/v1/keys");

    /// Secret keys survive a text round trip, and their Debug output never
    /// contains the secret digits.
    #[test]
    fn secret_text_round_trip_and_redaction() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let key = KeyPair::generate(&mut rng);
        let text = key.to_secret_text();
        let back = KeyPair::from_secret_text(&format!("  {}\n", text.as_str())).unwrap();
        assert_eq!(back.public(), key.public());
        let debug = format!("{key:?}");
        let digits = text.strip_prefix(SECRET_PREFIX).unwrap();
        assert!(!debug.contains(digits));
        assert!(debug.contains("redacted"));
    }

    /// Public keys parse from their display form; secrets and junk are refused
    /// with an error that says what went wrong.
    #[test]
    fn public_key_text() {
        let key = KeyPair::from_seed([3; 32]);
        let public: PublicKey = key.public().to_string().parse().unwrap();
        assert_eq!(public, key.public());
        assert_eq!(
            key.to_secret_text().parse::<PublicKey>(),
            Err(KeyTextError::SecretWherePublicExpected)
        );
        assert_eq!(
            "abc".parse::<PublicKey>(),
            Err(KeyTextError::BadHex { expected_len: 64 })
        );
        // The identity point has small order: a weak key, refused.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            hex::encode(identity).parse::<PublicKey>(),
            Err(KeyTextError::InvalidPublicKey)
        );
        assert_eq!(
            KeyPair::from_secret_text(&key.public().to_string()).unwrap_err(),
            KeyTextError::MissingSecretPrefix
        );
    }

    /// Remembering validated keys changes no answer: a valid key is valid
    /// again (and verifies), a weak or off-curve key is refused every time
    /// (refusals are not remembered), and the memory stays bounded however
    /// many keys pass.
    #[test]
    fn recently_validated_keys_give_the_same_answers() {
        let key = KeyPair::from_seed([7; 32]);
        let signature = key.sign(TEST, b"m");
        for _ in 0..2 {
            let validated = key.public().validate().unwrap();
            assert_eq!(validated.public(), key.public());
            assert!(validated.verify(TEST, b"m", &signature).is_ok());
        }
        let mut identity = [0u8; 32];
        identity[0] = 1;
        // Half of all y coordinates have no point: find one.
        let off_curve = (2u8..=255)
            .map(|y| {
                let mut bytes = [0u8; 32];
                bytes[0] = y;
                PublicKey(bytes)
            })
            .find(|key| VerifyingKey::from_bytes(&key.0).is_err())
            .unwrap();
        for _ in 0..2 {
            assert!(PublicKey(identity).validate().is_err());
            assert!(off_curve.validate().is_err());
        }
        for seed in 0..(2 * RecentKeys::CAPACITY + 1) as u64 {
            let mut bytes = [0u8; 32];
            bytes[..8].copy_from_slice(&seed.to_le_bytes());
            KeyPair::from_seed(bytes).public().validate().unwrap();
        }
        let recent = RecentKeys::lock();
        assert!(recent.newer.len() + recent.older.len() <= 2 * RecentKeys::CAPACITY);
        assert!(!recent.newer.contains_key(&PublicKey(identity)));
    }

    /// A signature verifies only under its own key, domain and message.
    #[test]
    fn signatures_bind_key_domain_and_message() {
        let a = KeyPair::from_seed([1; 32]);
        let b = KeyPair::from_seed([2; 32]);
        let sig = a.sign(TEST, b"m");
        assert!(a.public().verify(TEST, b"m", &sig).is_ok());
        assert!(b.public().verify(TEST, b"m", &sig).is_err());
        assert!(a.public().verify(TEST, b"n", &sig).is_err());
        assert!(a
            .public()
            .verify(Domain::new("test/v1/other"), b"m", &sig)
            .is_err());
    }
}
