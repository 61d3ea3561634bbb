//! Peer frames: every `WireMessage` a peer can send, decoded as the ingress
//! task does, then through signature collection and verification against a
//! fixed committee in both request modes. Must never panic.
#![no_main]

use bftd_fuzz::{committee, decode_canonical, verify_for_real, AcceptingVerifier};
use bftd_protocol::verify::MessageLimits;
use bftd_protocol::{
    verify_message, verify_messages, BatchVerifier, Config, RequestMode, WireMessage,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(message) = decode_canonical::<WireMessage>(data) else {
        return;
    };
    let _ = (message.kind(), message.signer());
    // Connection-authenticated mode: shape checks, grants instead of client
    // signatures.
    let authenticated = MessageLimits::of(&Config {
        request_mode: RequestMode::ConnectionAuthenticated,
        ..Config::default()
    });
    let _ = verify_message(
        message.clone(),
        committee(),
        &authenticated,
        &mut AcceptingVerifier::default(),
    );
    let limits = MessageLimits::of(&Config::default());
    if verify_for_real(data) {
        // As the ingress task does: a batch, one message at a time on failure.
        let _ = verify_messages(vec![message], committee(), &limits, &mut BatchVerifier);
    } else {
        let _ = verify_message(
            message,
            committee(),
            &limits,
            &mut AcceptingVerifier::default(),
        );
    }
});
