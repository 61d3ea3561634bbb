//! `bench --catch-up`: the last node is SIGKILLed when the measurement
//! window opens and stays down while the others commit the window's load;
//! after the drain it is restarted with its data, and its `/status` and
//! `/metrics` are polled every 50 ms until it holds the height the others
//! reached. What is reported is how far behind it was and how fast it
//! caught up: state transfer (verified blocks fetched from its peers) from
//! a cold start, process start and store recovery included. With
//! `--retain-blocks` below what it missed, it jumps past the pruned blocks
//! instead (design notes §47): then the time to the others' height is
//! reported, and no rate.

use crate::net::launch::{kill, node_counter, node_status, start_node};
use crate::net::layout::{Layout, State};
use crate::net::NetError;
use serde::Serialize;
use std::process::Child;
use std::time::{Duration, Instant};

/// How often the restarted node is polled.
const POLL: Duration = Duration::from_millis(50);
/// Give up waiting for the node to catch up after this long.
const GIVE_UP: Duration = Duration::from_secs(300);

/// How a node that fell behind caught up.
#[derive(Clone, Debug, Serialize)]
pub struct CatchUp {
    /// The node stopped during the window.
    pub node: u16,
    /// Its process after the restart.
    pub pid: u32,
    /// Its height when it was killed.
    pub height_at_kill: u64,
    /// The height the others had reached when it was restarted.
    pub target_height: u64,
    /// Requests it executed from its restart until it reached the target
    /// (its `bftd_requests_committed_total`, which starts at 0 with the
    /// process).
    pub behind_tx: u64,
    /// Seconds from the restart (the process spawned) until it answered
    /// `/status`.
    pub serving_s: Option<f64>,
    /// Seconds from the restart until it held the target height; null if
    /// not within 300 s.
    pub caught_up_s: Option<f64>,
    /// `behind_tx / caught_up_s`; null after a jump (it did not execute
    /// what it skipped).
    pub tx_per_s: Option<f64>,
    /// Jumps it made past history its peers pruned (`--retain-blocks`
    /// below what it missed; design notes §47): then it executed only the
    /// blocks after the checkpoint it jumped to.
    pub jumps: u64,
}

/// The node `--catch-up` stops: the last one (never view 0's primary).
pub fn lagging_node(state: &State) -> u16 {
    (state.n as u16).saturating_sub(1)
}

/// SIGKILLs the lagging node; returns its height just before.
pub async fn stop(state: &State) -> Result<(u16, u64), NetError> {
    let id = lagging_node(state);
    let node = state.node(id)?;
    let height = node_status(node.metrics, Duration::from_secs(1))
        .await
        .map_or(0, |status| status.height);
    if let Some(pid) = node.pid {
        kill(pid);
    }
    Ok((id, height))
}

/// Restarts the lagging node and watches it until it holds the others'
/// height. Its process is added to `children`, to be stopped with the rest.
pub async fn restart_and_watch(
    layout: &Layout,
    state: &mut State,
    children: &mut Vec<Child>,
    (id, height_at_kill): (u16, u64),
) -> Result<CatchUp, NetError> {
    let others: Vec<u16> = state
        .honest_ids()
        .into_iter()
        .filter(|&i| i != id)
        .collect();
    let target_height = super::crash::max_height(state, &others).await;
    eprintln!(
        "catch-up: node {id} was killed at height {height_at_kill}; the others are at {target_height}: restarting it ..."
    );
    let restarted = Instant::now();
    let child = start_node(layout, state, id)?;
    let pid = child.id();
    children.push(child);
    let metrics = state.node(id)?.metrics;
    let mut report = CatchUp {
        node: id,
        pid,
        height_at_kill,
        target_height,
        behind_tx: 0,
        serving_s: None,
        caught_up_s: None,
        tx_per_s: None,
        jumps: 0,
    };
    let mut last_said = Instant::now();
    while restarted.elapsed() < GIVE_UP {
        if let Some(status) = node_status(metrics, Duration::from_millis(500)).await {
            report
                .serving_s
                .get_or_insert(restarted.elapsed().as_secs_f64());
            if status.height >= target_height {
                let seconds = restarted.elapsed().as_secs_f64();
                report.caught_up_s = Some(seconds);
                let executed = node_counter(
                    metrics,
                    "bftd_requests_committed_total",
                    Duration::from_secs(1),
                )
                .await
                .unwrap_or(0.0);
                report.behind_tx = executed as u64;
                let jumps = node_counter(metrics, "bftd_jumps_total", Duration::from_secs(1))
                    .await
                    .unwrap_or(0.0);
                report.jumps = jumps as u64;
                if report.jumps == 0 {
                    report.tx_per_s = Some(executed / seconds.max(1e-9));
                } else {
                    eprintln!(
                        "catch-up: node {id} jumped past the blocks its peers pruned (retain_blocks), then executed {} tx to reach height {target_height}",
                        report.behind_tx
                    );
                }
                break;
            }
            if last_said.elapsed() >= Duration::from_secs(5) {
                eprintln!(
                    "catch-up: node {id} at height {} of {target_height} after {:.0} s",
                    status.height,
                    restarted.elapsed().as_secs_f64()
                );
                last_said = Instant::now();
            }
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(report)
}
