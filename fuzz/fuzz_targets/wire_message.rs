//! Peer frames: every `WireMessage` a peer can send, decoded as the ingress
//! task does, then through signature collection and verification against a
//! fixed committee in both request modes. Must never panic.
#![no_main]

use bftd_fuzz::{committee, decode_canonical};
use bftd_protocol::{verify_message, verify_messages, BatchVerifier, RequestMode, WireMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(message) = decode_canonical::<WireMessage>(data) else {
        return;
    };
    for mode in [
        RequestMode::ClientSigned,
        RequestMode::ConnectionAuthenticated,
    ] {
        let _ = verify_message(message.clone(), committee(), mode, &mut BatchVerifier);
    }
    let _ = verify_messages(
        vec![message.clone(), message],
        committee(),
        RequestMode::ClientSigned,
        &mut BatchVerifier,
    );
});
