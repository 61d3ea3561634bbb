//! Cryptography for bftd: Ed25519 identity keys, domain-separated signatures,
//! batch verification and SHA-256 digests.
//!
//! Every signature in bftd covers `SHA-256(domain tag || message)`, where the
//! tag names the protocol version and the message kind (see [`Domain`]). A
//! signature made for one kind of message therefore never verifies as another
//! kind.
//!
//! This crate does no I/O: keys are generated from a caller-supplied RNG and
//! encoded to and from text; reading and writing key files is the daemon's job.
//!
//! # Backend choice
//!
//! ed25519-dalek 3.0 on curve25519-dalek 5, built (by the workspace's
//! `.cargo/config.toml`) with both its AVX2 and its AVX-512 IFMA backends;
//! it uses IFMA where the CPU has it, else AVX2 ([`signature_backend`] says
//! which). On an AMD EPYC with IFMA, `cargo bench -p bftd-crypto --bench
//! crypto -- verify` measured one verification at 62 µs (AVX2) against 37 µs
//! (IFMA), and a batch of 256 at 5.4–5.7 ms against 4.0–4.1 ms (design notes
//! §34).
//!
//! ```
//! use bftd_crypto::{Domain, KeyPair};
//! const PING: Domain = Domain::new("example/v1/ping");
//!
//! let key = KeyPair::from_seed([7; 32]);
//! let signature = key.sign(PING, b"hello");
//! assert!(key.public().verify(PING, b"hello", &signature).is_ok());
//! // The same bytes under another domain do not verify.
//! const PONG: Domain = Domain::new("example/v1/pong");
//! assert!(key.public().verify(PONG, b"hello", &signature).is_err());
//! ```
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

mod backend;
mod digest;
mod fixed_bytes;
mod keys;
mod verify;

pub use backend::signature_backend;
pub use digest::{Digest, DigestBuilder};
pub use keys::{KeyPair, KeyTextError, PublicKey, Signature, ValidatedKey};
pub use verify::{verify_batch, Domain, SignatureCheck, SignatureError};
