//! The gRPC API (proto/bftd.proto; docs/client-protocol.md section 9): the
//! same service as the QUIC client API for programs in any language.
//!
//! It goes through the QUIC API's own paths ([`clients::admit`],
//! [`Replies`], [`Subscription`]), so limits, at-most-once and receipts are
//! identical: only the framing differs. Each `Submit` stream has its own
//! bounded reply queue, as a QUIC connection does; each `Deliver` call is
//! one subscription with its own queue, ended with RESOURCE_EXHAUSTED when
//! the subscriber stops reading for `subscriber_stall_ms`.
//!
//! Only client-signed requests: gRPC here is plaintext HTTP/2 without
//! client authentication, so the node cannot know who is connected, which
//! the connection-authenticated mode relies on. A connection-authenticated
//! node refuses every `Submit` with FAILED_PRECONDITION saying so. Nothing
//! is lost by the plaintext for a client that verifies: a receipt or block
//! is checked against the cluster's keys, whoever relayed it.

use super::clients::{self, Replies, Subscription};
use super::consensus::Input;
use super::Shared;
use crate::client_api::NodeMessage;
use crate::grpc::v1;
use crate::grpc::v1::ordering_server::{Ordering, OrderingServer};
use crate::storage::DiskStorage;
use bftd_protocol::{codec, RequestMode, SeqNum, SignedRequest};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Receipts and rejections handed to HTTP/2 at a time per `Submit` call,
/// beyond the reply queue (each a few hundred bytes).
const OUT_QUEUE: usize = 64;
/// Blocks handed to HTTP/2 at a time per `Deliver` call, beyond the reply
/// queue: a block leaves the queue's byte bound when it moves here, so
/// this stays tiny (a block may be as large as a batch).
const DELIVER_OUT_QUEUE: usize = 1;
/// gRPC connections held at once: the next waits in the kernel's backlog
/// until one closes (QUIC's `[connections]` slots do not cover TCP).
const MAX_CONNECTIONS: usize = 1024;
/// Concurrent calls per HTTP/2 connection: a client needs one `Submit`, one
/// `Deliver` and the odd `Status`; more only multiply its queues.
const MAX_STREAMS_PER_CONNECTION: u32 = 16;

/// Binds the gRPC listener (at start, so a taken port fails the start).
pub(crate) async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Serves gRPC on `listener` until the node stops.
pub(crate) async fn serve(
    listener: TcpListener,
    inputs: mpsc::Sender<Input>,
    shared: Arc<Shared>,
    storage: DiskStorage,
    height: watch::Receiver<SeqNum>,
) {
    let max_message = crate::client_api::max_client_frame_bytes(shared.limits.max_request_bytes);
    let service = OrderingService {
        inputs,
        shared,
        storage,
        height,
    };
    let server = OrderingServer::new(service)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(usize::MAX);
    let (accepted, incoming) = mpsc::channel(1);
    tokio::spawn(accept(listener, accepted));
    let incoming = tokio_stream::wrappers::ReceiverStream::new(incoming);
    let served = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .add_service(server)
        .serve_with_incoming(incoming)
        .await;
    if let Err(error) = served {
        tracing::warn!(%error, "the gRPC server stopped");
    }
}

/// Accepts connections while fewer than [`MAX_CONNECTIONS`] are open.
async fn accept(listener: TcpListener, accepted: mpsc::Sender<std::io::Result<Counted>>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let connection = match listener.accept().await {
            Ok((stream, _)) => Ok(Counted {
                // Receipts are small and latency matters: no Nagle delay.
                stream: {
                    let _ = stream.set_nodelay(true);
                    stream
                },
                _slot: slot,
            }),
            // Out of file descriptors, say: the server goes on, after a
            // pause so the loop does not spin.
            Err(error) => {
                tracing::warn!(%error, "cannot accept a gRPC connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        if accepted.send(connection).await.is_err() {
            return;
        }
    }
}

/// A TCP connection holding one of the [`MAX_CONNECTIONS`] slots until it
/// closes.
struct Counted {
    stream: tokio::net::TcpStream,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for Counted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

struct OrderingService {
    inputs: mpsc::Sender<Input>,
    shared: Arc<Shared>,
    storage: DiskStorage,
    height: watch::Receiver<SeqNum>,
}

type ReplyStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn rejection(request_id: u64, code: v1::RejectCode, message: String) -> v1::SubmitReply {
    v1::SubmitReply {
        reply: Some(v1::submit_reply::Reply::Rejection(v1::Rejection {
            request_id,
            code: code.into(),
            message,
        })),
    }
}

#[tonic::async_trait]
impl Ordering for OrderingService {
    type SubmitStream = ReplyStream<v1::SubmitReply>;
    type DeliverStream = ReplyStream<v1::Block>;

    async fn submit(
        &self,
        request: Request<Streaming<v1::SubmitRequest>>,
    ) -> Result<Response<Self::SubmitStream>, Status> {
        if self.shared.request_mode == RequestMode::ConnectionAuthenticated {
            return Err(Status::failed_precondition(
                "this cluster is connection-authenticated: a request is accepted only from a \
                 connection authenticated with the client's key, which this plaintext gRPC \
                 endpoint cannot do; submit through the QUIC client API (bftd client library), \
                 or run the cluster client-signed",
            ));
        }
        let mut incoming = request.into_inner();
        let (reply_to, mut replies) =
            Replies::new(self.shared.reply_queue, self.shared.reply_queue_bytes);
        let (out, out_rx) = mpsc::channel(OUT_QUEUE);
        // Replies: receipts and rejections, converted as they come. When
        // the caller is gone, `out` closes and so does the reply queue.
        let writer_out = out.clone();
        tokio::spawn(async move {
            while let Some(queued) = replies.recv().await {
                let reply = match queued.message() {
                    NodeMessage::Receipt(receipt) => v1::SubmitReply {
                        reply: Some(v1::submit_reply::Reply::Receipt(
                            crate::grpc::receipt_to_proto(receipt),
                        )),
                    },
                    NodeMessage::Rejected { request_id, reason } => rejection(
                        *request_id,
                        crate::grpc::reject_code(*reason),
                        reason.to_string(),
                    ),
                    _ => continue,
                };
                if writer_out.send(Ok(reply)).await.is_err() {
                    break;
                }
            }
        });
        // Requests: each checked as on QUIC, then handed to consensus.
        let inputs = self.inputs.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = incoming.message() => message,
                    () = out.closed() => break,
                };
                let bytes = match message {
                    Ok(Some(message)) => message.signed_request,
                    Ok(None) | Err(_) => break,
                };
                let request = match codec::decode::<SignedRequest>(&bytes) {
                    Ok(request) => request,
                    Err(error) => {
                        shared
                            .metrics
                            .malformed_client_frames
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let reply = rejection(
                            0,
                            v1::RejectCode::Malformed,
                            format!(
                                "signed_request is not the canonical encoding of a \
                                 SignedRequest (docs/client-protocol.md sections 1 and 5): \
                                 {error}"
                            ),
                        );
                        if out.try_send(Ok(reply)).is_err() {
                            tracing::debug!("gRPC reply dropped: the caller is not reading");
                        }
                        continue;
                    }
                };
                if clients::submit(request, None, &shared, &reply_to, &inputs)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            // Dropping `reply_to` here ends the reply stream once every
            // request still pending in consensus has its answer.
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(out_rx);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn deliver(
        &self,
        request: Request<v1::DeliverRequest>,
    ) -> Result<Response<Self::DeliverStream>, Status> {
        let from = SeqNum(request.into_inner().from_height.max(1));
        let (reply_to, mut replies) =
            Replies::new(self.shared.reply_queue, self.shared.reply_queue_bytes);
        let subscription = Subscription::start(
            from,
            self.storage.clone(),
            Arc::new(Semaphore::new(1)),
            self.height.clone(),
            reply_to,
            self.shared.clone(),
        );
        let (out, out_rx) = mpsc::channel(DELIVER_OUT_QUEUE);
        tokio::spawn(async move {
            // Until the subscription ends or the caller goes away.
            let _subscription = CancelOnDrop(Some(subscription));
            loop {
                let queued = tokio::select! {
                    queued = replies.recv() => queued,
                    () = out.closed() => break,
                };
                let Some(queued) = queued else { break };
                let item = match queued.message() {
                    NodeMessage::Block { block, duplicates } => {
                        Ok(crate::grpc::block_to_proto(block, duplicates))
                    }
                    NodeMessage::SubscriptionEnded { reason } => {
                        Err(Status::resource_exhausted(reason.clone()))
                    }
                    _ => continue,
                };
                let ended = item.is_err();
                if out.send(item).await.is_err() || ended {
                    break;
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(out_rx);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn status(
        &self,
        _request: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::NodeStatus>, Status> {
        Ok(Response::new(crate::grpc::status_to_proto(
            &self.shared.status(),
        )))
    }
}

/// Cancels a subscription whose call ended (its blocking reads included).
struct CancelOnDrop(Option<Subscription>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(subscription) = self.0.take() {
            subscription.cancel();
        }
    }
}
