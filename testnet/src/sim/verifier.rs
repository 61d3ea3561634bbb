//! Signature verification with a cache: a broadcast is verified once per
//! receiver in a real cluster; here all receivers share one process, so the
//! result for identical (key, bytes, signature) is computed once. Real
//! Ed25519 throughout: only repeated work is skipped.

use bftd_crypto::{verify_batch, Digest, SignatureCheck};
use bftd_protocol::SignatureVerifier;
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct CachingVerifier {
    cache: HashMap<Digest, bool>,
}

impl SignatureVerifier for CachingVerifier {
    fn verify(&mut self, checks: &[SignatureCheck]) -> Result<(), Vec<usize>> {
        let keys: Vec<Digest> = checks.iter().map(SignatureCheck::fingerprint).collect();
        let unknown: Vec<usize> = (0..checks.len())
            .filter(|&i| !self.cache.contains_key(&keys[i]))
            .collect();
        if !unknown.is_empty() {
            let batch: Vec<SignatureCheck> = unknown.iter().map(|&i| checks[i].clone()).collect();
            let bad = match verify_batch(&batch) {
                Ok(()) => Vec::new(),
                Err(bad) => bad,
            };
            for (position, &index) in unknown.iter().enumerate() {
                self.cache.insert(keys[index], !bad.contains(&position));
            }
        }
        let invalid: Vec<usize> = (0..checks.len())
            .filter(|&i| self.cache.get(&keys[i]) != Some(&true))
            .collect();
        if invalid.is_empty() {
            Ok(())
        } else {
            Err(invalid)
        }
    }
}
