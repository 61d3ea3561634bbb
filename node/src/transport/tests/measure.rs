//! The measurement behind `endpoint::SEGMENTATION_OFFLOAD` (ignored in
//! normal runs).

use super::*;

/// Process CPU time (user + system) in seconds, from /proc (Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, in clock ticks (100/s).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// One bulk transfer of `total` bytes in 64 KiB frames over a peer-style
/// unidirectional stream; returns (MB/s, CPU ms per MB).
async fn bulk_transfer(gso: bool, total: usize) -> (f64, f64) {
    let counters = Arc::new(Counters::default());
    let server_key = key(200);
    let server_identity = tls::certified_key(&server_key).unwrap();
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(
        tls::server_crypto(&server_identity, &counters).unwrap(),
    ));
    server.transport_config(endpoint::transport_config(endpoint::LISTENER_STREAMS, gso));
    let listener = endpoint::endpoint(
        endpoint::bind_socket(([127, 0, 0, 1], 0).into()).unwrap(),
        Some(server),
        None,
    )
    .unwrap();
    let address = listener.local_addr().unwrap();
    let receiving = tokio::spawn(async move {
        let connection = listener.accept().await.unwrap().await.unwrap();
        let recv = connection.accept_uni().await.unwrap();
        let mut frames = FrameReceiver::new(
            recv,
            connection.clone(),
            DEFAULT_MAX_FRAME_BYTES,
            Arc::new(Counters::default()),
            false,
            frame::KeepAlive::default(),
        );
        let mut received = 0;
        while let Some(frame) = frames.recv().await.unwrap() {
            received += frame.len();
        }
        received
    });
    let client_identity = tls::certified_key(&key(201)).unwrap();
    let crypto =
        tls::client_crypto(&client_identity, server_key.public(), ALPN_PEER, &counters).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(endpoint::transport_config(
        endpoint::PEER_DIALER_STREAMS,
        gso,
    ));
    let local = endpoint::endpoint(
        endpoint::bind_socket(([127, 0, 0, 1], 0).into()).unwrap(),
        None,
        None,
    )
    .unwrap();
    let connection = peer::dial(&local, &config, address, HANDSHAKE_TIMEOUT)
        .await
        .unwrap();
    let mut send = connection.open_uni().await.unwrap();
    let chunk = Bytes::from(vec![0x5a; 64 * 1024]);
    let (wall, cpu) = (Instant::now(), cpu_seconds());
    for _ in 0..total / chunk.len() {
        frame::write_frames(&mut send, [chunk.clone()])
            .await
            .unwrap();
    }
    send.finish().unwrap();
    assert_eq!(receiving.await.unwrap(), total);
    let seconds = wall.elapsed().as_secs_f64();
    let megabytes = total as f64 / 1e6;
    let cpu_ms = (cpu_seconds() - cpu) * 1000.0;
    (megabytes / seconds, cpu_ms / megabytes)
}

/// Measures loopback throughput with UDP segmentation offload on and off,
/// to choose `endpoint::SEGMENTATION_OFFLOAD`. Not a check: run with
/// `cargo test -p bftd --release -- --ignored measure_segmentation_offload --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check; takes a while"]
async fn measure_segmentation_offload() {
    const TOTAL: usize = 512 * 1024 * 1024;
    for round in 0..3 {
        for gso in [false, true] {
            let (rate, cpu) = bulk_transfer(gso, TOTAL).await;
            println!("round {round} gso {gso:5}: {rate:7.0} MB/s, {cpu:.2} CPU-ms/MB");
        }
    }
}
