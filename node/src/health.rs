//! `bftd health`: one HTTP GET of a node's `/healthz`, without curl (the
//! container image has nothing but bftd).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Longest answer read: /healthz answers one short line.
const MAX_ANSWER: u64 = 64 * 1024;

/// Asks `http://address/healthz`; returns whether it answered 200 and the
/// body (or the status line, if the body is empty). Every step is bounded
/// by `timeout`.
pub fn check(address: SocketAddr, timeout: Duration) -> std::io::Result<(bool, String)> {
    let mut stream = TcpStream::connect_timeout(&address, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // One write: the request in one segment, not one per formatted piece.
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    stream.take(MAX_ANSWER).read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("");
    let ok = status.split_whitespace().nth(1) == Some("200");
    let body = if body.trim().is_empty() { status } else { body };
    Ok((ok, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve_once(answer: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                // The whole request head before answering: closing with
                // unread bytes would reset the connection under the reply.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        address
    }

    /// 200 is healthy, 503 is not (with the node's reason), nothing
    /// listening is an error.
    #[test]
    fn status_codes() {
        let ok = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
        assert_eq!(
            check(ok, Duration::from_secs(2)).unwrap(),
            (true, "ok\n".into())
        );
        let down = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\nno quorum\n");
        let (healthy, body) = check(down, Duration::from_secs(2)).unwrap();
        assert!(!healthy);
        assert_eq!(body, "no quorum\n");
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(check(closed, Duration::from_secs(2)).is_err());
    }
}
