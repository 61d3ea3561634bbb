//! What every fuzz target shares: a fixed committee, and the canonical-codec
//! check (a value that decodes re-encodes to exactly the bytes it came from,
//! which is what lets bftd verify signatures over re-encodings).

use bftd_crypto::KeyPair;
use bftd_protocol::codec;
use bftd_protocol::Committee;
use serde::{de::DeserializeOwned, Serialize};
use std::sync::OnceLock;

/// The committee every target verifies against: n = 4, f = 1, keys from
/// seeds 1..=4 (the seed corpora are signed with the same keys).
pub fn committee() -> &'static Committee {
    static COMMITTEE: OnceLock<Committee> = OnceLock::new();
    COMMITTEE.get_or_init(|| {
        let keys: Vec<_> = keys().iter().map(KeyPair::public).collect();
        Committee::new(&keys).expect("four distinct keys make a committee")
    })
}

/// The committee's key pairs, in replica order.
pub fn keys() -> &'static [KeyPair] {
    static KEYS: OnceLock<Vec<KeyPair>> = OnceLock::new();
    KEYS.get_or_init(|| {
        (1..=4u8)
            .map(|seed| KeyPair::from_seed([seed; 32]))
            .collect()
    })
}

/// Decodes a `T` from `data` with the wire codec; if it decodes, asserts that
/// it re-encodes to exactly `data`.
pub fn decode_canonical<T: Serialize + DeserializeOwned>(data: &[u8]) -> Option<T> {
    let value: T = codec::decode(data).ok()?;
    let again = codec::encode(&value).expect("a decoded value re-encodes");
    assert_eq!(again, data, "decoding is not canonical");
    Some(value)
}

/// Whether this input pays for real signature verification. Ed25519 costs
/// ~50 µs a signature, and a seed message carries up to a dozen: verifying
/// every input held the rate near 2,700 a second. One input in sixteen (by
/// length) is verified for real; the rest go through
/// [`AcceptingVerifier`], which exercises the same collection code and the
/// "all signatures valid" path — what a byzantine peer, who holds a
/// committee key, can reach anyway.
pub fn verify_for_real(data: &[u8]) -> bool {
    data.len() % 16 == 0
}

/// Accepts every signature: a byzantine replica signs whatever it likes.
#[derive(Debug, Default)]
pub struct AcceptingVerifier {
    /// Signatures it was asked to check.
    pub checked: usize,
}

impl bftd_protocol::SignatureVerifier for AcceptingVerifier {
    fn verify(&mut self, checks: &[bftd_crypto::SignatureCheck]) -> Result<(), Vec<usize>> {
        self.checked += checks.len();
        Ok(())
    }
}
