//! Beyond decoding: what a byzantine peer's messages do to an honest
//! replica. Node 3 of the fixed committee is byzantine, so every signature
//! it makes is accepted; the others' signatures must verify for real (only
//! the seeds carry them, so the fuzzer replays and splices honest messages).
//! The input is a sequence of frames `[from][len: u16 LE][WireMessage]`
//! (a `from` byte of 0xff advances the clock by `len` ms and fires timers)
//! fed to replica 0, whose actions are drained and persisted to memory
//! after every step. Must never panic.
#![no_main]

use bftd_crypto::SignatureCheck;
use bftd_fuzz::{committee, keys};
use bftd_protocol::{
    codec, verify_message, Config, MemStorage, NodeId, Recovered, Replica, ReplicaSetup,
    SignatureVerifier, Storage, WireMessage,
};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Accepts node 3's signatures; checks everyone else's, remembering
/// results (the same honest signatures recur in every input).
struct ByzantineVerifier;

fn cache() -> &'static Mutex<HashMap<([u8; 32], Vec<u8>, String), bool>> {
    static CACHE: OnceLock<Mutex<HashMap<([u8; 32], Vec<u8>, String), bool>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

impl SignatureVerifier for ByzantineVerifier {
    fn verify(&mut self, checks: &[SignatureCheck]) -> Result<(), Vec<usize>> {
        let byzantine = keys()[3].public();
        let mut cache = cache().lock().unwrap();
        let mut failed = Vec::new();
        for (index, check) in checks.iter().enumerate() {
            if check.key.public() == byzantine {
                continue;
            }
            let entry = (
                check.signing_bytes,
                check.signature.0.to_vec(),
                check.key.public().to_string(),
            );
            let valid = *cache
                .entry(entry)
                .or_insert_with(|| bftd_crypto::verify_batch(std::slice::from_ref(check)).is_ok());
            if !valid {
                failed.push(index);
            }
        }
        if cache.len() > 100_000 {
            cache.clear();
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed)
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut storage = MemStorage::new();
    let config = Config::default();
    let setup = ReplicaSetup {
        id: NodeId(0),
        key: keys()[0].clone(),
        committee: committee().clone(),
        config: config.clone(),
        blocks: Arc::new(storage.clone()),
    };
    let mut now = Duration::from_millis(1);
    let Ok(mut replica) = Replica::new(setup, Recovered::default(), now) else {
        return;
    };
    let limits = bftd_protocol::verify::MessageLimits::of(&config);
    let mut rest = data;
    while rest.len() >= 3 {
        let from = rest[0];
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]]));
        rest = &rest[3..];
        if from == 0xff {
            now += Duration::from_millis(len as u64);
            replica.handle_timeout(now);
        } else {
            let take = len.min(rest.len());
            let (frame, tail) = rest.split_at(take);
            rest = tail;
            let Ok(message) = codec::decode::<WireMessage>(frame) else {
                continue;
            };
            let from = NodeId(u16::from(from % 3) + 1);
            let Ok(verified) =
                verify_message(message, committee(), &limits, &mut ByzantineVerifier)
            else {
                continue;
            };
            now += Duration::from_micros(100);
            replica.handle_message(now, from, verified);
        }
        let actions = replica.drain_actions();
        let _ = storage.apply(&actions.persist, &actions.deliver);
    }
});
