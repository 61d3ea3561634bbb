//! A minimal HTTP/1.1 endpoint for operators: `/metrics` (Prometheus),
//! `/status` (JSON), `/healthz` (503 while starting, or without a quorum),
//! `/evidence` (JSON). Requests are read with a
//! size cap and a timeout; anything else gets a 404 or 400.

use super::quorum::Health;
use super::Shared;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// A request must arrive this fast.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
const MAX_CONNECTIONS: usize = 64;
/// After a failed accept (out of file descriptors), wait this long.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The connections still waiting for their request head, oldest first,
/// each with the sender that evicts it.
type Waiting = Arc<Mutex<VecDeque<(u64, oneshot::Sender<()>)>>>;

/// Binds the metrics address. Fails with the address in the error.
pub(crate) async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Serves until the task is dropped. Each connection has its own task and
/// a deadline; when every slot is taken, the connection that has waited
/// longest without sending its request is closed to make room, so idle
/// connections (a scanner, a stuck scraper, an attacker) cannot keep
/// `/healthz` from answering a supervisor.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let waiting: Waiting = Arc::default();
    let mut next_id = 0u64;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let oldest = lock(&waiting).pop_front();
                let Some((_, evict)) = oldest else {
                    continue; // every slot is answering a request: drop this one
                };
                let _ = evict.send(());
                match tokio::time::timeout(READ_TIMEOUT, slots.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    _ => continue,
                }
            }
        };
        let id = next_id;
        next_id += 1;
        let (evict, evicted) = oneshot::channel();
        lock(&waiting).push_back((id, evict));
        let shared = shared.clone();
        let waiting = waiting.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let got_head = || forget(&waiting, id);
            tokio::select! {
                // Only an eviction sends; `forget` drops the sender.
                Ok(()) = evicted => {}
                _ = tokio::time::timeout(READ_TIMEOUT, handle(stream, &shared, got_head)) => {}
            }
            forget(&waiting, id);
        });
    }
}

fn lock(waiting: &Waiting) -> std::sync::MutexGuard<'_, VecDeque<(u64, oneshot::Sender<()>)>> {
    waiting.lock().unwrap_or_else(|e| e.into_inner())
}

/// Connection `id` is no longer waiting for its request (it has it, or it
/// ended): it cannot be evicted any more.
fn forget(waiting: &Waiting, id: u64) {
    lock(waiting).retain(|(waiting, _)| *waiting != id);
}

async fn handle(
    mut stream: TcpStream,
    shared: &Shared,
    got_head: impl FnOnce(),
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Ok(());
        }
        head.extend_from_slice(buffer.get(..read).unwrap_or_default());
        if head.len() > MAX_HEAD {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request head too large\n",
            )
            .await;
        }
    }
    got_head();
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return respond(
            &mut stream,
            "400 Bad Request",
            "text/plain",
            "bad request\n",
        )
        .await;
    };
    if method != "GET" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n",
        )
        .await;
    }
    match path {
        "/metrics" => {
            let body = shared.render_metrics(&shared.transport_stats());
            respond(&mut stream, "200 OK", "text/plain; version=0.0.4", &body).await
        }
        "/status" => {
            let body = serde_json::to_string_pretty(&shared.status()).unwrap_or_default() + "\n";
            respond(&mut stream, "200 OK", "application/json", &body).await
        }
        "/evidence" => {
            let evidence: Vec<String> = shared
                .metrics
                .latest()
                .map(|s| s.evidence.iter().map(|e| format!("{e:?}")).collect())
                .unwrap_or_default();
            let body = serde_json::to_string_pretty(&evidence).unwrap_or_default() + "\n";
            respond(&mut stream, "200 OK", "application/json", &body).await
        }
        "/healthz" => {
            let health = shared.health();
            let status = match health {
                Health::Ok => "200 OK",
                Health::Starting | Health::NoQuorum { .. } => "503 Service Unavailable",
            };
            respond(&mut stream, status, "text/plain", &format!("{health}\n")).await
        }
        _ => {
            respond(
                &mut stream,
                "404 Not Found",
                "text/plain",
                "try /metrics, /status, /healthz or /evidence\n",
            )
            .await
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
