//! Length-delimited frames on long-lived QUIC streams.
//!
//! A frame is a `u32` little-endian length followed by that many bytes. One
//! stream carries many frames: a stream per message costs about twice the
//! CPU (DESIGN.md, "Dependencies, measured").
//!
//! The reader checks the length against `max_frame_bytes` *before* it
//! allocates anything, and then grows the buffer only as bytes actually
//! arrive: a peer that announces 64 MiB and sends ten bytes costs ten bytes,
//! not 64 MiB.

use super::stats::Counters;
use super::{close_code, TransportError};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

/// Bytes of the length prefix.
const PREFIX_BYTES: usize = 4;
/// Initial buffer for a frame body; larger bodies grow as data arrives.
const INITIAL_BODY_BYTES: usize = 64 * 1024;

/// Things a stream half keeps alive: the client-side endpoint (its socket)
/// and the server-side client slot.
#[derive(Debug, Clone, Default)]
#[allow(dead_code)] // Held, never read: dropping them is what matters.
pub(crate) struct KeepAlive {
    pub(crate) endpoint: Option<quinn::Endpoint>,
    pub(crate) client_slot: Option<Arc<OwnedSemaphorePermit>>,
}

/// Sends length-delimited frames on one QUIC send stream.
#[derive(Debug)]
pub struct FrameSender {
    send: quinn::SendStream,
    max_frame_bytes: usize,
    counters: Arc<Counters>,
    count_as_client: bool,
    _keep: KeepAlive,
}

impl FrameSender {
    pub(crate) fn new(
        send: quinn::SendStream,
        max_frame_bytes: usize,
        counters: Arc<Counters>,
        count_as_client: bool,
        keep: KeepAlive,
    ) -> FrameSender {
        FrameSender {
            send,
            max_frame_bytes,
            counters,
            count_as_client,
            _keep: keep,
        }
    }

    /// Sends one frame. Waits while QUIC flow control says the receiver is
    /// behind. A frame longer than `max_frame_bytes` is refused (and
    /// counted) without sending anything.
    pub async fn send(&mut self, frame: Bytes) -> Result<(), TransportError> {
        let length = frame.len();
        if length > self.max_frame_bytes {
            self.counters.oversized_sent.increment();
            return Err(TransportError::FrameTooLarge {
                length: length as u64,
                max_frame_bytes: self.max_frame_bytes,
            });
        }
        write_frame(&mut self.send, frame).await?;
        if self.count_as_client {
            self.counters.client_frames_out.increment();
        }
        Ok(())
    }

    /// Finishes the stream: the receiver sees a clean end after the last
    /// frame.
    pub fn finish(&mut self) -> Result<(), TransportError> {
        self.send.finish().map_err(|_| TransportError::StreamClosed)
    }
}

/// Writes one frame (the caller checked its length against the limit).
pub(crate) async fn write_frame(
    send: &mut quinn::SendStream,
    frame: Bytes,
) -> Result<(), TransportError> {
    let length = u32::try_from(frame.len()).map_err(|_| TransportError::FrameTooLarge {
        length: frame.len() as u64,
        max_frame_bytes: u32::MAX as usize,
    })?;
    // One call for prefix and body: one lock of the connection state, and the
    // body is handed to quinn without a copy.
    let mut chunks = [Bytes::copy_from_slice(&length.to_le_bytes()), frame];
    send.write_all_chunks(&mut chunks)
        .await
        .map_err(|source| TransportError::Write { source })
}

/// Receives length-delimited frames from one QUIC receive stream.
#[derive(Debug)]
pub struct FrameReceiver {
    recv: quinn::RecvStream,
    connection: quinn::Connection,
    max_frame_bytes: usize,
    counters: Arc<Counters>,
    count_as_client: bool,
    _keep: KeepAlive,
}

impl FrameReceiver {
    pub(crate) fn new(
        recv: quinn::RecvStream,
        connection: quinn::Connection,
        max_frame_bytes: usize,
        counters: Arc<Counters>,
        count_as_client: bool,
        keep: KeepAlive,
    ) -> FrameReceiver {
        FrameReceiver {
            recv,
            connection,
            max_frame_bytes,
            counters,
            count_as_client,
            _keep: keep,
        }
    }

    /// The next frame, or `None` when the sender finished the stream cleanly.
    ///
    /// A length prefix above `max_frame_bytes` closes the whole connection
    /// (the sender is broken or hostile), is counted, and returns
    /// [`TransportError::FrameTooLarge`]. A stream that ends inside a frame
    /// returns [`TransportError::TruncatedFrame`].
    pub async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        let Some(length) = self.read_prefix().await? else {
            return Ok(None);
        };
        if length > self.max_frame_bytes as u64 {
            self.counters.oversized_received.increment();
            self.connection
                .close(close_code::FRAME_TOO_LARGE, b"frame too large");
            return Err(TransportError::FrameTooLarge {
                length,
                max_frame_bytes: self.max_frame_bytes,
            });
        }
        // Fits in usize: it is at most `max_frame_bytes`.
        let length = length as usize;
        let frame = self.read_body(length).await?;
        if self.count_as_client {
            self.counters.client_frames_in.increment();
        }
        Ok(Some(frame))
    }

    /// The length prefix, or `None` on a clean end of stream before it.
    async fn read_prefix(&mut self) -> Result<Option<u64>, TransportError> {
        let mut prefix = [0u8; PREFIX_BYTES];
        let mut filled = 0;
        while let Some(rest) = prefix.get_mut(filled..).filter(|rest| !rest.is_empty()) {
            match self.recv.read(rest).await {
                Ok(Some(read)) => filled += read,
                Ok(None) if filled == 0 => return Ok(None),
                Ok(None) => {
                    return Err(TransportError::TruncatedFrame {
                        expected: PREFIX_BYTES,
                        received: filled,
                    })
                }
                Err(source) => return Err(TransportError::Read { source }),
            }
        }
        Ok(Some(u64::from(u32::from_le_bytes(prefix))))
    }

    async fn read_body(&mut self, length: usize) -> Result<Bytes, TransportError> {
        let mut body = BytesMut::new();
        while body.len() < length {
            let wanted = length - body.len();
            match self.recv.read_chunk(wanted, true).await {
                Ok(Some(chunk)) => {
                    // Fast path: the whole body in one chunk, no copy.
                    if body.is_empty() && chunk.bytes.len() == length {
                        return Ok(chunk.bytes);
                    }
                    if body.capacity() == 0 {
                        body.reserve(length.min(INITIAL_BODY_BYTES));
                    }
                    body.extend_from_slice(&chunk.bytes);
                }
                Ok(None) => {
                    return Err(TransportError::TruncatedFrame {
                        expected: length,
                        received: body.len(),
                    })
                }
                Err(source) => return Err(TransportError::Read { source }),
            }
        }
        Ok(body.freeze())
    }

    /// Stops the stream: the sender's writes fail from now on.
    pub fn stop(&mut self) {
        // Already stopped or finished: nothing left to stop.
        let _ = self.recv.stop(close_code::STREAM_STOPPED);
    }
}
