//! `bench --kill-primary D`: SIGKILL the primary D into the measurement
//! window and time the recovery, read from the survivors' `/status` every
//! 20 ms: when they are in a new view, and when the first block commits in
//! it.

use crate::net::launch::{kill, node_status};
use crate::net::layout::State;
use serde::Serialize;
use std::time::{Duration, Instant};

/// How often the survivors are polled.
const POLL: Duration = Duration::from_millis(20);
/// Give up waiting for a recovery after this long.
const GIVE_UP: Duration = Duration::from_secs(30);

/// What a primary crash cost.
#[derive(Clone, Debug, Serialize)]
pub struct Recovery {
    /// The node killed (the primary when the kill came).
    pub killed: u16,
    /// Seconds into the measurement window when it was killed.
    pub at_s: f64,
    /// Seconds from the kill until a survivor was in a new view (not
    /// changing); null if none was within 30 s.
    pub new_view_s: Option<f64>,
    /// Seconds from the kill until a block committed in the new view (a
    /// height above any the survivors showed before they were in it); null
    /// if none within 30 s.
    pub first_commit_s: Option<f64>,
}

/// Waits until `at`, kills the primary of the view the honest nodes are in,
/// and watches the survivors until a block commits in a new view.
pub async fn kill_primary_and_watch(state: State, at: Instant, window_start: Instant) -> Recovery {
    tokio::time::sleep_until(at.into()).await;
    let honest = state.honest_ids();
    let mut view = 0;
    let mut primary = 0;
    for &id in &honest {
        if let Some(status) = status_of(&state, id).await {
            view = status.view;
            primary = status.primary;
            break;
        }
    }
    let survivors: Vec<u16> = honest.into_iter().filter(|&id| id != primary).collect();
    // Blocks in flight at the kill may still commit in the old view: the
    // baseline follows them until the new view is seen.
    let mut baseline = max_height(&state, &survivors).await;
    if let Some(pid) = state
        .nodes
        .get(usize::from(primary))
        .and_then(|node| node.pid)
    {
        kill(pid);
    }
    let killed = Instant::now();
    let mut recovery = Recovery {
        killed: primary,
        at_s: killed.duration_since(window_start).as_secs_f64(),
        new_view_s: None,
        first_commit_s: None,
    };
    while killed.elapsed() < GIVE_UP && recovery.first_commit_s.is_none() {
        for &id in &survivors {
            let Some(status) = status_of(&state, id).await else {
                continue;
            };
            let moved = status.view > view && !status.in_view_change;
            if !moved {
                if recovery.new_view_s.is_none() {
                    baseline = baseline.max(status.height);
                }
                continue;
            }
            if recovery.new_view_s.is_none() {
                recovery.new_view_s = Some(killed.elapsed().as_secs_f64());
            }
            if status.height > baseline {
                recovery.first_commit_s = Some(killed.elapsed().as_secs_f64());
                break;
            }
        }
        tokio::time::sleep(POLL).await;
    }
    recovery
}

async fn status_of(state: &State, id: u16) -> Option<bftd::client_api::NodeStatus> {
    let node = state.nodes.get(usize::from(id))?;
    node_status(node.metrics, Duration::from_millis(200)).await
}

/// The highest height any of `ids` reports (0 if none answers).
pub(super) async fn max_height(state: &State, ids: &[u16]) -> u64 {
    let mut height = 0;
    for &id in ids {
        if let Some(status) = status_of(state, id).await {
            height = height.max(status.height);
        }
    }
    height
}
