//! A request its own node left unanswered goes to every node, as PBFT asks
//! of clients: the backups start their request timers, so a primary that is
//! silent, cut off or censoring is replaced by a view change, and the
//! client takes the first receipt that verifies from whichever node sends
//! it. When even that fails, the client asks the nodes why, so the error
//! can name a missing quorum instead of a bare timeout.

use super::connection::{Connection, Waiter};
use super::{Client, ClientError};
use crate::client_api::{ClientMessage, Committed, NodeMessage, ReceiptError, Rejection};
use crate::transport::Bytes;
use bftd_protocol::{NodeId, SignedRequest};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long the nodes get to say why nothing committed, once the timeout
/// has passed.
const DIAGNOSIS_TIMEOUT: Duration = Duration::from_secs(1);
/// A diagnosis this recent is reused: when a cluster stops committing,
/// every request in flight times out at once, and one look is enough.
const DIAGNOSIS_FRESH: Duration = Duration::from_secs(1);

/// A node that does not hear from enough peers to form a quorum: nothing
/// can commit through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuorumShortfall {
    /// The node that said so.
    pub node: NodeId,
    /// Other nodes it heard from recently.
    pub peers_in_touch: usize,
    /// Nodes in the cluster.
    pub n: usize,
    /// Nodes a quorum needs (2f+1, the node itself included).
    pub quorum: usize,
}

impl std::fmt::Display for QuorumShortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "node {} hears from only {} of {} peers (a quorum needs {} of {} nodes); \
             nothing can commit until more nodes are up and reachable",
            self.node.0,
            self.peers_in_touch,
            self.n.saturating_sub(1),
            self.quorum,
            self.n
        )
    }
}

/// Why a request got no verified receipt in time, although it went to
/// every node.
#[derive(Debug)]
pub struct NoReceipt {
    /// How long the client waited: the timeout, or less if no node was
    /// left that could answer.
    pub waited: Duration,
    /// The client's timeout.
    pub timeout: Duration,
    /// The client's own node, tried first.
    pub node: NodeId,
    /// The other nodes the request was then sent to.
    pub sent_to: Vec<NodeId>,
    /// A node that reported too few peers for a quorum: the likely cause.
    pub no_quorum: Option<QuorumShortfall>,
    /// Nodes the request could not be sent to, and why.
    pub unreachable: Vec<(NodeId, Arc<ClientError>)>,
    /// Nodes that refused the request, and why.
    pub refused: Vec<(NodeId, Rejection)>,
    /// Nodes whose receipt did not verify (do not trust them).
    pub invalid: Vec<(NodeId, ReceiptError)>,
}

impl std::fmt::Display for NoReceipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.waited < self.timeout {
            write!(f, "no receipt after {:.1?}: ", self.waited)?;
        } else {
            write!(f, "no receipt within {:?}: ", self.timeout)?;
        }
        match &self.no_quorum {
            Some(shortfall) => write!(f, "{shortfall}")?,
            None if self.sent_to.is_empty() => write!(
                f,
                "node {} did not answer, and no other node could be reached",
                self.node.0
            )?,
            None => write!(
                f,
                "node {} did not answer, nor did node(s) {} it was then sent to \
                 (the cluster may be overloaded or changing views: resubmitting the same \
                 request is safe, and `bftd status` on each node shows where it stands)",
                self.node.0,
                self.sent_to
                    .iter()
                    .map(|node| node.0.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )?,
        }
        for (node, error) in &self.unreachable {
            write!(f, "; node {} unreachable: {error}", node.0)?;
        }
        for (node, reason) in &self.refused {
            write!(f, "; node {} refused it: {reason}", node.0)?;
        }
        for (node, error) in &self.invalid {
            write!(
                f,
                "; node {} sent an invalid receipt ({error}): do not trust it",
                node.0
            )?;
        }
        Ok(())
    }
}

/// The last diagnosis, and when it was made.
pub(super) type DiagnosisCache = tokio::sync::Mutex<Option<(Instant, Option<QuorumShortfall>)>>;

/// What the nodes answered while a request went everywhere.
#[derive(Default)]
struct Answers {
    unreachable: Vec<(NodeId, Arc<ClientError>)>,
    refused: Vec<(NodeId, Rejection)>,
    invalid: Vec<(NodeId, ReceiptError)>,
}

impl Client {
    /// Sends `request` (encoded as `frame`) to every node, again at
    /// doubling intervals, until a receipt verifies or `deadline` passes.
    /// Connections to the other nodes open as they can, without holding
    /// back the ones that are up.
    pub(super) async fn retry_everywhere(
        &self,
        request: &SignedRequest,
        deadline: Instant,
    ) -> Result<Committed, ClientError> {
        // Each node gets its own copy (in connection-authenticated
        // clusters, the one carrying the client's grant to it).
        let mut frames = std::collections::HashMap::new();
        let others = self.links.others(self.node);
        for node in std::iter::once(self.node).chain(others.iter().copied()) {
            frames.insert(node, self.submit_frame(request, node)?);
        }
        let frame_for = |node: NodeId| frames.get(&node).cloned().unwrap_or_default();
        let id = request.request.request_id;
        let (tx, mut answers) = mpsc::unbounded_channel();
        // The own node's connection if it is open; if it closed, it is
        // dialled again like the others.
        let own = self.own_now();
        let mut live: Vec<Arc<Connection>> = own.iter().cloned().collect();
        let mut dialling = tokio::task::JoinSet::new();
        let to_dial = own.is_none().then_some(self.node).into_iter().chain(others);
        for node in to_dial {
            let links = self.links.clone();
            dialling.spawn(async move { (node, links.connection(node).await) });
        }
        let mut seen = Answers::default();
        let mut wait = self.resend_after;
        let mut resend_at = (Instant::now() + wait).min(deadline);
        if let Some(own) = &own {
            send_to(own, id, &tx, &frame_for(self.node)).await;
        }
        let committed = loop {
            tokio::select! {
                Some((node, message)) = answers.recv() => {
                    if let Some(committed) = self.take(request, node, message, &mut seen) {
                        break Some(committed);
                    }
                }
                Some(dialled) = dialling.join_next(), if !dialling.is_empty() => {
                    match dialled {
                        Ok((node, Ok(connection))) => {
                            send_to(&connection, id, &tx, &frame_for(node)).await;
                            live.push(connection);
                        }
                        Ok((node, Err(error))) => seen.unreachable.push((node, error)),
                        Err(_) => {}
                    }
                }
                _ = tokio::time::sleep_until(resend_at), if resend_at < deadline => {
                    for connection in &live {
                        send_to(connection, id, &tx, &frame_for(connection.node)).await;
                    }
                    wait = wait.saturating_mul(2);
                    resend_at = (Instant::now() + wait).min(deadline);
                }
                _ = tokio::time::sleep_until(deadline) => break None,
            }
            // Nothing left that could answer: no need to wait for the deadline.
            if dialling.is_empty() && live.iter().all(|connection| connection.closed()) {
                break None;
            }
        };
        for connection in &live {
            connection.forget(id);
        }
        match committed {
            Some(committed) => Ok(committed),
            None => Err(self.no_receipt(&live, seen, deadline).await),
        }
    }

    /// Takes one node's answer: the result if it is a receipt that verifies;
    /// otherwise notes what it was, for the error if nothing commits.
    fn take(
        &self,
        request: &SignedRequest,
        node: NodeId,
        message: NodeMessage,
        seen: &mut Answers,
    ) -> Option<Committed> {
        match message {
            NodeMessage::Receipt(receipt) => match self.verify(request, &receipt) {
                Ok(committed) => return Some(committed),
                Err(ClientError::InvalidReceipt(error)) => note(&mut seen.invalid, (node, error)),
                Err(_) => {}
            },
            NodeMessage::Rejected { reason, .. } => note(&mut seen.refused, (node, reason)),
            _ => {}
        }
        None
    }

    /// The error for a request nothing committed by `deadline` (or earlier,
    /// once no node was left to answer), with what the nodes say of why.
    async fn no_receipt(
        &self,
        live: &[Arc<Connection>],
        seen: Answers,
        deadline: Instant,
    ) -> ClientError {
        let left = deadline.saturating_duration_since(Instant::now());
        ClientError::NoReceipt(Box::new(NoReceipt {
            waited: self.timeout.saturating_sub(left),
            timeout: self.timeout,
            node: self.node,
            sent_to: live
                .iter()
                .map(|connection| connection.node)
                .filter(|&node| node != self.node)
                .collect(),
            no_quorum: self.diagnose(live).await,
            unreachable: seen.unreachable,
            refused: seen.refused,
            invalid: seen.invalid,
        }))
    }

    /// Asks the nodes still connected whether they hear from a quorum; the
    /// first that does not (this client's own node first) is named.
    async fn diagnose(&self, live: &[Arc<Connection>]) -> Option<super::QuorumShortfall> {
        let mut cache = self.diagnosis.lock().await;
        if let Some((at, diagnosis)) = *cache {
            if at.elapsed() < DIAGNOSIS_FRESH {
                return diagnosis;
            }
        }
        let frame = Self::frame(&ClientMessage::Status).ok()?;
        let mut asks = tokio::task::JoinSet::new();
        let mut connections: Vec<Arc<Connection>> = live.to_vec();
        for connection in self.links.open() {
            if !connections.iter().any(|c| c.node == connection.node) {
                connections.push(connection);
            }
        }
        for (rank, connection) in connections.into_iter().enumerate() {
            let frame = frame.clone();
            asks.spawn(async move {
                let status = connection.status(frame, DIAGNOSIS_TIMEOUT).await;
                (rank, connection.node, status)
            });
        }
        let mut shortfalls = Vec::new();
        while let Some(Ok((rank, node, status))) = asks.join_next().await {
            if let Ok(status) = status {
                if !status.has_quorum() {
                    shortfalls.push((
                        rank,
                        QuorumShortfall {
                            node,
                            peers_in_touch: status.peers_in_touch,
                            n: status.n,
                            quorum: status.quorum,
                        },
                    ));
                }
            }
        }
        shortfalls.sort_by_key(|(rank, _)| *rank);
        let diagnosis = shortfalls.first().map(|(_, shortfall)| *shortfall);
        *cache = Some((Instant::now(), diagnosis));
        diagnosis
    }
}

/// Routes the answer to request `id` on `connection` to `answers`, and sends
/// the request there. A closed connection is skipped.
async fn send_to(
    connection: &Connection,
    id: u64,
    answers: &mpsc::UnboundedSender<(NodeId, NodeMessage)>,
    frame: &Bytes,
) {
    if connection.wait_for(id, Waiter::Any(answers.clone())) {
        let _ = connection.send(frame.clone()).await;
    }
}

/// Adds `item` to `list` unless it is there already (each round of resends
/// may bring the same refusal again).
fn note<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}
