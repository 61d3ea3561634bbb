//! Whether a node hears from a quorum, said where operators look: a warning
//! in the log when it loses one (once, not every tick), an info when it is
//! back, and `/healthz`. A node without a quorum cannot commit anything, and
//! without this its clients would only see their requests time out.

use bftd_protocol::ReplicaStatus;
use std::time::Duration;

/// A node that just started has heard from nobody yet: it gets this long
/// (eight status intervals at the default 250 ms) before it reports that
/// it has no quorum.
pub(crate) const QUORUM_GRACE: Duration = Duration::from_secs(2);

/// How many peers a node hears from, and how many a quorum needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InTouch {
    /// Other nodes heard from recently.
    pub peers_in_touch: usize,
    /// Nodes a quorum needs (2f+1, this one included).
    pub quorum: usize,
}

impl InTouch {
    /// From the replica's status.
    pub(crate) fn of(status: &ReplicaStatus) -> InTouch {
        InTouch {
            peers_in_touch: status.peers_in_touch,
            quorum: status.quorum,
        }
    }

    fn has_quorum(self) -> bool {
        self.peers_in_touch + 1 >= self.quorum
    }
}

/// What `/healthz` answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Health {
    /// No status yet.
    Starting,
    /// A quorum is in touch, or the node is within its startup grace.
    Ok,
    /// Too few peers heard from: nothing can commit.
    NoQuorum {
        /// Other nodes heard from recently.
        peers_in_touch: usize,
        /// Other nodes in the cluster.
        peers: usize,
        /// Other nodes a quorum needs besides this one.
        needed: usize,
    },
}

impl Health {
    /// The health of a node `uptime` after its start, in a cluster of `n`
    /// nodes; `touch` is from its latest status, if it has one.
    pub(crate) fn of(touch: Option<InTouch>, uptime: Duration, n: usize) -> Health {
        match touch {
            None => Health::Starting,
            Some(status) if status.has_quorum() || uptime < QUORUM_GRACE => Health::Ok,
            Some(status) => Health::NoQuorum {
                peers_in_touch: status.peers_in_touch,
                peers: n.saturating_sub(1),
                needed: status.quorum.saturating_sub(1),
            },
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Health::Starting => f.write_str("starting"),
            Health::Ok => f.write_str("ok"),
            Health::NoQuorum {
                peers_in_touch,
                peers,
                needed,
            } => write!(
                f,
                "no quorum: hears from {peers_in_touch} of {peers} peers, a quorum needs {needed}"
            ),
        }
    }
}

/// A change worth a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QuorumChange {
    /// The node no longer hears from a quorum (or never did, past the
    /// grace).
    Lost(Health),
    /// It does again.
    Regained {
        /// Other nodes heard from recently.
        peers_in_touch: usize,
    },
}

/// Remembers whether the node had a quorum at the last step, so that only
/// changes are logged.
#[derive(Debug, Default)]
pub(crate) struct QuorumWatch {
    lost: bool,
}

impl QuorumWatch {
    /// Looks at the status after a step; returns a change to log, if any.
    pub(crate) fn observe(
        &mut self,
        touch: InTouch,
        uptime: Duration,
        n: usize,
    ) -> Option<QuorumChange> {
        let health = Health::of(Some(touch), uptime, n);
        match (self.lost, health) {
            (false, Health::NoQuorum { .. }) => {
                self.lost = true;
                Some(QuorumChange::Lost(health))
            }
            (true, Health::Ok) => {
                self.lost = false;
                Some(QuorumChange::Regained {
                    peers_in_touch: touch.peers_in_touch,
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(peers_in_touch: usize) -> InTouch {
        InTouch {
            peers_in_touch,
            quorum: 3,
        }
    }

    /// A node of four hearing from one peer has no quorum, but says so only
    /// after the startup grace; the log hears of the loss once and of the
    /// recovery once, however many steps pass in between.
    #[test]
    fn quorum_loss_is_reported_once_after_the_grace() {
        let after = QUORUM_GRACE + Duration::from_millis(1);
        assert_eq!(
            Health::of(Some(status(1)), Duration::ZERO, 4),
            Health::Ok,
            "within the grace"
        );
        let lost = Health::of(Some(status(1)), after, 4);
        assert_eq!(
            lost.to_string(),
            "no quorum: hears from 1 of 3 peers, a quorum needs 2"
        );
        assert_eq!(Health::of(Some(status(2)), after, 4), Health::Ok);
        assert_eq!(Health::of(None, after, 4), Health::Starting);

        let mut watch = QuorumWatch::default();
        assert_eq!(watch.observe(status(0), Duration::ZERO, 4), None);
        assert_eq!(
            watch.observe(status(1), after, 4),
            Some(QuorumChange::Lost(lost))
        );
        for _ in 0..10 {
            assert_eq!(watch.observe(status(1), after, 4), None);
        }
        assert_eq!(
            watch.observe(status(3), after, 4),
            Some(QuorumChange::Regained { peers_in_touch: 3 })
        );
        assert_eq!(watch.observe(status(3), after, 4), None);
    }
}
