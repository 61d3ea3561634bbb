//! Processes: finding the binaries, starting nodes and the proxy, telling
//! whether they still run, stopping them by PID, and asking nodes over HTTP
//! whether they are healthy.

use super::binaries::find_bftd_byzantine;
use super::error::NetError;
use super::layout::{Layout, State};
use bftd::client_api::NodeStatus;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The running `bftnet` executable (it runs the proxy as `bftnet proxy`).
pub fn find_bftnet() -> Result<PathBuf, NetError> {
    std::env::current_exe().map_err(|_| NetError::BinaryMissing {
        name: "bftnet",
        env: "PATH",
        searched: Vec::new(),
    })
}

/// Opens a log file for appending, with a line saying who starts now.
fn open_log(path: &Path, banner: &str) -> Result<(std::fs::File, std::fs::File), NetError> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(NetError::io("open", path))?;
    let _ = writeln!(file, "---- bftnet: {banner} ----");
    let second = file.try_clone().map_err(NetError::io("open", path))?;
    Ok((file, second))
}

/// Starts a process with its output in `log`, in its own process group (a
/// Ctrl-C at the terminal reaches bftnet, which stops its processes in
/// order, rather than every process at once).
fn spawn(mut command: Command, log: &Path, banner: &str) -> Result<Child, NetError> {
    let (out, err) = open_log(log, banner)?;
    command.stdin(Stdio::null()).stdout(out).stderr(err);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    let program = PathBuf::from(command.get_program());
    command
        .spawn()
        .map_err(|source| NetError::Spawn { program, source })
}

/// Starts node `id` with `bftd run --config` (`bftd-byzantine run` if it
/// has a behaviour: the operator's `bftd` cannot lie), and records its PID.
pub fn start_node(layout: &Layout, state: &mut State, id: u16) -> Result<Child, NetError> {
    create_store(layout, state, id)?;
    let behaviour = state.node(id)?.behaviour.clone();
    let program = match behaviour {
        Some(_) => find_bftd_byzantine(&state.bftd)?,
        None => state.bftd.clone(),
    };
    let mut command = Command::new(program);
    command
        .arg("run")
        .arg("--config")
        .arg(layout.node_config(id));
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "info");
    }
    let banner = format!(
        "starting node {id}{}",
        behaviour.map(|b| format!(" as {b}")).unwrap_or_default()
    );
    let child = spawn(command, &layout.node_log(id), &banner)?;
    state.node_mut(id)?.pid = Some(child.id());
    state.save(layout)?;
    Ok(child)
}

/// At a node's first start, creates its store (as `bftd init` does), once:
/// `bftd run` never creates one. A testnet from before bftnet recorded this
/// counts a store it finds as created.
fn create_store(layout: &Layout, state: &mut State, id: u16) -> Result<(), NetError> {
    if state.node(id)?.store_created {
        return Ok(());
    }
    let config = bftd::config::NodeConfig::load(&layout.node_config(id))?;
    if !bftd::runtime::store_path(&config).exists() {
        bftd::init(&config).map_err(|source| NetError::Store {
            id,
            source: Box::new(source),
        })?;
    }
    state.node_mut(id)?.store_created = true;
    state.save(layout)
}

/// Starts the fault proxy (`bftnet proxy --dir DIR`), and records its PID.
pub fn start_proxy(layout: &Layout, state: &mut State, bftnet: &Path) -> Result<Child, NetError> {
    let mut command = Command::new(bftnet);
    command.arg("proxy").arg("--dir").arg(&layout.dir);
    let child = spawn(command, &layout.proxy_log(), "starting the fault proxy")?;
    state.proxy.pid = Some(child.id());
    state.save(layout)?;
    Ok(child)
}

/// Whether `pid` is a live process (not a zombie) whose command line
/// contains `marker` (so a recycled PID is never taken for ours).
pub fn alive(pid: u32, marker: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return fallback_alive(pid);
    };
    // The state follows the command name, which is in parentheses and may
    // itself contain spaces or parentheses.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, Some("Z") | Some("X") | None) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    cmdline.contains(marker)
}

/// Whether a process this bftnet spawned has exited (gone, or a zombie: we
/// never reap detached children, so their PIDs cannot be recycled while we
/// run). Unlike [`alive`] it does not read the command line: for a moment
/// after `spawn` returns, Linux shows an empty `/proc/PID/cmdline` (the
/// parent resumes before exec has set up the new program's arguments), and
/// a node checked in that moment was once reported as "exited while
/// starting" although it started fine.
pub fn exited(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return !fallback_alive(pid);
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    matches!(state, Some("Z") | Some("X") | None)
}

/// Without /proc: ask the kernel whether the PID exists.
fn fallback_alive(pid: u32) -> bool {
    rustix::process::Pid::from_raw(pid as i32)
        .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok())
}

/// The command-line marker of node `id`'s process.
pub fn node_marker(layout: &Layout, id: u16) -> String {
    layout.node_config(id).display().to_string()
}

/// The command-line marker of the proxy's process.
pub fn proxy_marker(layout: &Layout) -> String {
    format!("proxy --dir {}", layout.dir.display())
}

/// Whether node `id` runs, according to its recorded PID.
pub fn node_alive(layout: &Layout, state: &State, id: u16) -> bool {
    state
        .nodes
        .get(usize::from(id))
        .and_then(|node| node.pid)
        .is_some_and(|pid| alive(pid, &node_marker(layout, id)))
}

/// Whether the proxy runs.
pub fn proxy_alive(layout: &Layout, state: &State) -> bool {
    state
        .proxy
        .pid
        .is_some_and(|pid| alive(pid, &proxy_marker(layout)))
}

/// Sends `signal` to `pid`.
fn send(pid: u32, signal: rustix::process::Signal) -> bool {
    rustix::process::Pid::from_raw(pid as i32)
        .is_some_and(|pid| rustix::process::kill_process(pid, signal).is_ok())
}

/// SIGKILL, at once.
pub fn kill(pid: u32) -> bool {
    send(pid, rustix::process::Signal::KILL)
}

/// Stops processes gracefully: SIGTERM to each, then SIGKILL to any still
/// running after `grace`. `procs` are `(pid, marker)`.
pub fn stop_all(procs: &[(u32, String)], grace: Duration) {
    let mut running: Vec<&(u32, String)> = procs
        .iter()
        .filter(|(pid, marker)| alive(*pid, marker))
        .collect();
    for (pid, _) in &running {
        send(*pid, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + grace;
    while !running.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        running.retain(|(pid, marker)| alive(*pid, marker));
    }
    for (pid, _) in running {
        kill(*pid);
    }
}

/// The last `lines` lines of a log file, without terminal colour codes.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(64 * 1024);
    let text = strip_colours(&String::from_utf8_lossy(
        text.get(start..).unwrap_or_default(),
    ));
    let all: Vec<&str> = text.lines().collect();
    let tail = all
        .get(all.len().saturating_sub(lines)..)
        .unwrap_or_default();
    tail.iter()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`), which a
/// node's log holds when its logger colours its output.
fn strip_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        }
    }
    out
}

/// A GET request to a node's HTTP endpoint: `(status code, body)`.
pub async fn http_get(
    address: SocketAddr,
    path: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        // Bounded: our node's answers are small.
        (&mut stream)
            .take(4 << 20)
            .read_to_end(&mut response)
            .await?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        Ok((code, body.to_owned()))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer in time",
        )),
    }
}

/// A node's `/status`, if it answers within `timeout`.
pub async fn node_status(address: SocketAddr, timeout: Duration) -> Option<NodeStatus> {
    match http_get(address, "/status", timeout).await {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// A counter from a node's `/metrics` (summed over labels).
pub async fn node_counter(address: SocketAddr, name: &str, timeout: Duration) -> Option<f64> {
    let (code, body) = http_get(address, "/metrics", timeout).await.ok()?;
    if code != 200 {
        return None;
    }
    let mut total = None;
    for line in body.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *total.get_or_insert(0.0) += value;
        }
    }
    total
}

/// Waits until every node in `ids` answers `/healthz` (healthy, or running
/// without a quorum), failing early (with the log's last lines) if a node
/// or the proxy exits, or after `timeout`.
/// The nodes must be this process's children, just started, and the proxy
/// known to be running (see [`exited`]).
pub async fn wait_healthy(
    layout: &Layout,
    state: &State,
    ids: &[u16],
    timeout: Duration,
) -> Result<(), NetError> {
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<u16> = ids.to_vec();
    loop {
        let mut still = Vec::new();
        for &id in &pending {
            let node = state.node(id)?;
            if node.pid.is_none_or(exited) {
                return Err(NetError::Unhealthy {
                    id,
                    reason: "exited while starting".into(),
                    log: layout.node_log(id),
                    tail: log_tail(&layout.node_log(id), 15),
                });
            }
            // A node without a quorum (503 "no quorum: ...") has started
            // all the same: it is up and serving, and the status line says
            // what it lacks. Think of a node restarted inside a partition.
            let healthy = match http_get(node.metrics, "/healthz", Duration::from_millis(500)).await
            {
                Ok((200, _)) => true,
                Ok((503, body)) => body.starts_with("no quorum"),
                _ => false,
            };
            if !healthy {
                still.push(id);
            }
        }
        if state.proxy.pid.is_some_and(exited) {
            return Err(NetError::ProxyDied {
                log: layout.proxy_log(),
                tail: log_tail(&layout.proxy_log(), 15),
            });
        }
        pending = still;
        let Some(&first) = pending.first() else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(NetError::Unhealthy {
                id: first,
                reason: format!(
                    "did not answer http://{}/healthz within {} s",
                    state.node(first)?.metrics,
                    timeout.as_secs()
                ),
                log: layout.node_log(first),
                tail: log_tail(&layout.node_log(first), 15),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes a line to standard error, ignoring failure: said on the way
/// out, where the terminal or pipe may be gone (`eprintln!` would panic
/// there and leave the testnet running).
pub fn say(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
    let _ = err.flush();
}

/// Writes a line to standard output, ignoring failure (as [`say`]).
pub fn say_out(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Resolves once standard output or standard error is a pipe whose reader
/// has gone (`bftnet up | tee log`, and `tee` was stopped): nobody sees
/// the testnet any more, so `bftnet up` stops it.
pub async fn output_closed() {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if reader_gone(std::io::stdout()) || reader_gone(std::io::stderr()) {
            return;
        }
    }
}

/// Whether `fd` is the writing end of a pipe whose reading end is closed
/// (poll reports an error on it; a terminal, file or open pipe reports
/// nothing when asked for no events).
fn reader_gone(fd: impl std::os::fd::AsFd) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(&fd, PollFlags::empty())];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(poll(&mut fds, Some(&now)), Ok(ready) if ready > 0)
        && fds[0].revents().contains(PollFlags::ERR)
}

/// Resolves on Ctrl-C, SIGTERM or SIGHUP.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    // The handlers are installed here, when the future is made, not when it
    // is first polled: a caller that makes it before saying it is ready
    // (`bftnet scenario run` prints "testnet up") cannot miss a Ctrl-C
    // sent the moment it says so.
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let signals = [
            SignalKind::interrupt(),
            SignalKind::terminate(),
            SignalKind::hangup(),
        ]
        .map(|kind| signal(kind).ok());
        async move {
            let [Some(mut interrupt), Some(mut term), Some(mut hangup)] = signals else {
                let _ = tokio::signal::ctrl_c().await;
                return;
            };
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = term.recv() => {}
                _ = hangup.recv() => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Log tails shown in errors lose the logger's colour codes, and
    /// nothing else.
    #[test]
    fn colour_codes_are_stripped() {
        let line =
            "\u{1b}[2m2026-11-26T16:09:02Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m node started [3] (a)";
        assert_eq!(
            strip_colours(line),
            "2026-11-26T16:09:02Z  INFO node started [3] (a)"
        );
        assert_eq!(strip_colours("plain"), "plain");
    }
}
