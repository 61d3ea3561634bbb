//! `bftnet init` end to end: the directories it generates run as they
//! are (no `bftd init` step), a client run from a node directory finds
//! `./cluster.toml`, and `bftnet check --cluster` verifies the cluster
//! without a testnet directory.

mod common;

use common::{bftd_bin, bftnet_bin, run_bounded, Background};
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Four free UDP ports on loopback, all held until chosen.
fn quic_ports() -> Vec<u16> {
    let sockets: Vec<UdpSocket> = (0..4)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    sockets
        .iter()
        .map(|socket| socket.local_addr().unwrap().port())
        .collect()
}

/// A base port whose next three are free too (`bftnet init` gives nodes
/// sharing an IP consecutive metrics ports).
fn metrics_base() -> u16 {
    for _ in 0..200 {
        let base = 20_000 + (rand_port() % 30_000);
        let held: Vec<_> = (0..4)
            .filter_map(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == 4 {
            return base;
        }
    }
    panic!("no 4 consecutive free TCP ports");
}

fn rand_port() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    (nanos ^ std::process::id()) as u16
}

fn bftd(dir: &Path, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(bftd_bin());
    command
        .current_dir(dir)
        .args(args)
        .env_remove("BFTD_CLUSTER");
    run_bounded(command, Duration::from_secs(40))
}

#[test]
fn generated_directories_run_as_they_are() {
    let _serial = common::serial();
    let out = std::env::temp_dir().join(format!("bftnet-init-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let hosts: Vec<String> = quic_ports()
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    let base = metrics_base();
    let mut init = Command::new(bftnet_bin());
    init.args(["init", "--hosts", &hosts.join(","), "--metrics-port"])
        .arg(base.to_string())
        .arg("--out")
        .arg(&out);
    let output = run_bounded(init, Duration::from_secs(30));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Started from their directories exactly as generated.
    let nodes: Vec<Background> = (0..4)
        .map(|id| {
            let dir = out.join(format!("node{id}"));
            let log = std::fs::File::create(out.join(format!("node{id}.log"))).unwrap();
            Background(
                Command::new(bftd_bin())
                    .current_dir(&dir)
                    .args(["run", "--config", "node.toml"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in 0..4u16 {
        let address = format!("127.0.0.1:{}", base + id);
        while !bftd(&out, &["health", "--address", &address])
            .status
            .success()
        {
            assert!(Instant::now() < deadline, "node {id} not healthy in 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // A client in node 2's directory finds ./cluster.toml.
    let output = bftd(
        &out.join("node2"),
        &["submit", "--node", "2", "from-a-node-dir"],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("from-a-node-dir\theight"),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let mut check = Command::new(bftnet_bin());
    check
        .args(["check", "--cluster"])
        .arg(out.join("cluster.toml"));
    let output = run_bounded(check, Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("4 honest nodes agree"),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    drop(nodes);
    std::fs::remove_dir_all(&out).unwrap();
}
