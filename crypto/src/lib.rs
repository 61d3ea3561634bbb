//! Cryptography for bftd: Ed25519 identity keys, domain-separated signatures,
//! batch verification and SHA-256 digests.
//!
//! Every signature in bftd covers `domain tag || message`, where the tag names
//! the protocol version and the message kind (see [`Domain`]). A signature made
//! for one kind of message therefore never verifies as another kind.
//!
//! This crate does no I/O: keys are generated from a caller-supplied RNG and
//! encoded to and from text; reading and writing key files is the daemon's job.
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

mod digest;
mod fixed_bytes;
mod keys;
mod verify;

pub use digest::{Digest, DigestBuilder};
pub use keys::{KeyPair, KeyTextError, PublicKey, Signature, ValidatedKey};
pub use verify::{verify_batch, Domain, SignatureCheck, SignatureError};
