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
//! ed25519-dalek 3.0 on curve25519-dalek 5 with the default backend selection
//! (AVX2 detected at run time). The AVX-512 IFMA backend that the design's
//! table measured nearly halving verification needs a CPU with `avx512ifma`;
//! the project's machines (AMD EPYC, 2 vCPUs) report no AVX-512 flag at all
//! in `/proc/cpuinfo`, so a build with
//! `RUSTFLAGS='--cfg curve25519_dalek_backend="avx512"'` cannot use it there:
//! `cargo bench -p bftd-crypto --bench crypto -- verify` gave 62 µs per
//! verification (default) against 53 µs (avx512 cfg), and batch
//! verification of 256 signatures 5.1 ms against 5.0 ms, on a machine busy
//! with builds — within the run-to-run noise. We keep the default build;
//! deployments on AVX-512 IFMA hosts can set the cfg without code changes.
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
