//! SHA-256 digests.

use sha2::{Digest as _, Sha256};
use std::fmt;

/// A SHA-256 digest. Displays as lowercase hex; `{:#}` shows the first 8 hex
/// digits, which is what logs and status lines use.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Digest(pub [u8; 32]);

crate::fixed_bytes::serde_as_bytes!(Digest, 32);

impl Digest {
    /// The all-zero digest, used as the `prev_hash` of the first block.
    pub const ZERO: Digest = Digest([0; 32]);

    /// Digest of `bytes` under a domain tag, so digests of different kinds of
    /// objects can never collide by construction.
    pub fn of(domain: crate::Domain, bytes: &[u8]) -> Digest {
        let mut builder = DigestBuilder::new(domain);
        builder.update(bytes);
        builder.finish()
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Digest, crate::KeyTextError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes)
            .map_err(|_| crate::KeyTextError::BadHex { expected_len: 64 })?;
        Ok(Digest(bytes))
    }
}

/// Incremental digest over several parts, prefixed by a domain tag.
#[derive(Clone)]
pub struct DigestBuilder(Sha256);

impl fmt::Debug for DigestBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DigestBuilder")
    }
}

impl DigestBuilder {
    /// Starts a digest under `domain`.
    pub fn new(domain: crate::Domain) -> DigestBuilder {
        let mut hasher = Sha256::new();
        domain.write_prefix(|part| hasher.update(part));
        DigestBuilder(hasher)
    }

    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update(bytes);
        self
    }

    /// Finishes the digest.
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = if f.alternate() { 4 } else { 32 };
        for byte in self.0.iter().take(shown) {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self:#})")
    }
}
