//! What an operator and a supervisor see of the `bftd` binary: how a store
//! comes to exist, what the operator's binary refuses, and that the
//! metrics endpoint stays responsive.

mod common;

use bftd_protocol::RequestMode;
use common::TestCluster;
use std::time::{Duration, Instant};

/// Idle connections to the metrics port (opened and never used: a port
/// scanner, a stuck scraper, an attacker) must not keep `/healthz` from
/// answering: a supervisor that gets no answer restarts a healthy node.
#[test]
fn idle_connections_do_not_block_healthz() {
    let cluster = TestCluster::start(4, RequestMode::ClientSigned, "");
    let address = cluster.metrics[0];
    let idle: Vec<std::net::TcpStream> = (0..200)
        .map(|_| std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)).unwrap())
        .collect();
    for attempt in 0..5 {
        let asked = Instant::now();
        let answer = common::http_answer(address, "/healthz");
        assert!(
            answer.is_some(),
            "attempt {attempt}: /healthz unanswered after {:?} with {} idle connections open",
            asked.elapsed(),
            idle.len()
        );
        assert!(asked.elapsed() < Duration::from_secs(2));
    }
    drop(idle);
}
