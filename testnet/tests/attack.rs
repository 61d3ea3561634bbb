//! `bftnet attack` against real processes, short, so the harness cannot
//! rot: two cheap attacks of issue 10 (full-size and oversized client
//! frames, subscribers that never read) for 5 s at 200 tx/s each. Every node stays within its memory bound, honest clients keep
//! committing, the honest logs check, and the JSON report has its fields.
//! The full verdict (95% of the rate, p99 within 2x) is not asserted here:
//! on a shared test machine 5 s windows are too noisy for it; RELIABILITY.md
//! has the measured runs.

mod common;

use common::*;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

fn attack(name: &str) -> Value {
    let mut command = Command::new(bftnet_bin());
    command
        .args(["attack", name, "--duration", "5", "--warmup", "1"])
        .args(["--rate", "200", "--json"])
        .env("BFTD_BIN", bftd_bin());
    let output = run_bounded(command, Duration::from_secs(150));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let results: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("attack {name}: no JSON ({e}); stderr:\n{stderr}"));
    let result = results[0].clone();
    eprintln!("[attack {name}] {result}");
    for key in [
        "unattacked",
        "attacked",
        "rate_kept",
        "p99_limit_ms",
        "peak_rss_mb",
        "node_counters",
        "attack_counters",
        "check",
        "pass",
    ] {
        assert!(result.get(key).is_some(), "no `{key}` in {result:#}");
    }
    let attacked = result["attacked"]["committed_tx_s"].as_f64().unwrap_or(0.0);
    assert!(
        attacked > 100.0,
        "honest commits stalled under {name}: {result:#}"
    );
    for peak in result["peak_rss_mb"].as_array().expect("per node").iter() {
        if let Some(mb) = peak.as_f64() {
            assert!(mb <= 300.0, "a node held {mb} MB under {name}: {result:#}");
        }
    }
    let failures = result["failures"].to_string();
    assert!(
        !failures.contains("check:"),
        "the honest logs do not check after {name}: {failures}"
    );
    result
}

/// Client frames of the client frame limit (junk, and full-size requests
/// with bad signatures) are answered and counted, 64 MiB frames are cut
/// off at their length prefix, and the nodes stay in their bounds.
#[test]
fn client_frames_are_refused_and_counted() {
    let _serial = serial();
    let result = attack("client-frames");
    let counters = &result["node_counters"];
    for reason in ["malformed_client_frame", "oversized_client_frame"] {
        let counted = counters[format!("rejected{{reason=\"{reason}\"}}")]
            .as_f64()
            .unwrap_or(0.0);
        assert!(counted > 0.0, "no {reason} counted: {result:#}");
    }
}

/// Subscribers from height 1 that never read do not hold the node's memory
/// or its honest clients.
#[test]
fn subscribers_that_never_read_cost_bounded_memory() {
    let _serial = serial();
    let result = attack("slow-subscriber");
    assert_eq!(
        result["attack_counters"]["subscribers_never_reading"].as_f64(),
        Some(64.0),
        "{result:#}"
    );
}
