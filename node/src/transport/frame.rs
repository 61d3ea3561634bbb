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

/// Bytes of the length prefix.
const PREFIX_BYTES: usize = 4;
/// Initial buffer for a frame split across chunks; larger frames grow as
/// their data arrives.
const INITIAL_BODY_BYTES: usize = 64 * 1024;
/// Frames up to this size are copied into one write buffer with their
/// prefixes (see [`write_frames`]).
const COALESCE_BYTES: usize = 16 * 1024;

/// Things a stream half keeps alive: the client-side endpoint (its socket)
/// and the server-side client slot.
#[derive(Debug, Clone, Default)]
#[allow(dead_code)] // Held, never read: dropping them is what matters.
pub(crate) struct KeepAlive {
    pub(crate) endpoint: Option<quinn::Endpoint>,
    pub(crate) client_slot: Option<Arc<super::accept::ClientSlot>>,
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
        write_frames(&mut self.send, std::iter::once(frame)).await?;
        if self.count_as_client {
            self.counters.client_frames_out.increment();
        }
        Ok(())
    }

    /// Sends several frames in one write (see [`write_frames`]): what a
    /// writer task does with everything queued since its last write. A frame
    /// longer than `max_frame_bytes` is counted and left out; the others are
    /// sent.
    pub async fn send_many(&mut self, frames: Vec<Bytes>) -> Result<(), TransportError> {
        let before = frames.len();
        let max_frame_bytes = self.max_frame_bytes;
        let frames: Vec<Bytes> = frames
            .into_iter()
            .filter(|frame| frame.len() <= max_frame_bytes)
            .collect();
        for _ in frames.len()..before {
            self.counters.oversized_sent.increment();
        }
        let sent = frames.len() as u64;
        write_frames(&mut self.send, frames).await?;
        if self.count_as_client {
            self.counters.client_frames_out.add(sent);
        }
        Ok(())
    }

    /// Finishes the stream: the receiver sees a clean end after the last
    /// frame.
    pub fn finish(&mut self) -> Result<(), TransportError> {
        self.send.finish().map_err(|_| TransportError::StreamClosed)
    }
}

/// Writes frames (the caller checked their lengths against the limit) in
/// one call, with their length prefixes.
///
/// Frames up to [`COALESCE_BYTES`] are copied, prefix and body, into one
/// shared buffer; larger ones follow their prefix as chunks of their own,
/// uncopied. quinn keeps each chunk as a segment until it is acknowledged
/// and finds the data for every packet it sends by scanning those segments
/// from the oldest (`SendBuffer::get` in quinn-proto 0.11), so two segments
/// per small frame made packet assembly quadratic in the data in flight:
/// 11 % of the load generator's CPU at saturation went there. Copying a
/// 600-byte request is far cheaper than that scan.
pub(crate) async fn write_frames(
    send: &mut quinn::SendStream,
    frames: impl IntoIterator<Item = Bytes>,
) -> Result<(), TransportError> {
    let mut chunks = coalesce(frames)?;
    send.write_all_chunks(&mut chunks)
        .await
        .map_err(|source| TransportError::Write { source })
}

/// Frames to write, as few chunks as possible (see [`write_frames`]).
fn coalesce(frames: impl IntoIterator<Item = Bytes>) -> Result<Vec<Bytes>, TransportError> {
    let frames: Vec<Bytes> = frames.into_iter().collect();
    // One allocation for everything copied: every prefix, every small body.
    let copied = frames
        .iter()
        .map(|frame| {
            PREFIX_BYTES
                + if frame.len() <= COALESCE_BYTES {
                    frame.len()
                } else {
                    0
                }
        })
        .sum();
    let mut buffer = BytesMut::with_capacity(copied);
    let mut chunks = Vec::new();
    for frame in frames {
        let length = u32::try_from(frame.len()).map_err(|_| TransportError::FrameTooLarge {
            length: frame.len() as u64,
            max_frame_bytes: u32::MAX as usize,
        })?;
        buffer.extend_from_slice(&length.to_le_bytes());
        if frame.len() <= COALESCE_BYTES {
            buffer.extend_from_slice(&frame);
        } else {
            chunks.push(buffer.split().freeze());
            chunks.push(frame);
        }
    }
    if !buffer.is_empty() {
        chunks.push(buffer.freeze());
    }
    Ok(chunks)
}

/// Receives length-delimited frames from one QUIC receive stream.
pub struct FrameReceiver {
    recv: quinn::RecvStream,
    connection: quinn::Connection,
    max_frame_bytes: usize,
    counters: Arc<Counters>,
    count_as_client: bool,
    /// Received bytes not yet returned as frames.
    buffered: Bytes,
    /// A frame split across chunks, being put together.
    assembly: Option<BytesMut>,
    /// The length of the frame being read, once its prefix is consumed.
    pending: Option<usize>,
    /// Bytes of a refused frame still to be read and thrown away.
    skipping: usize,
    /// Refuses a frame by its first bytes and its length, before it is read
    /// (peer streams: a frame bigger than any honest message of its kind).
    refuse: Option<Refuse>,
    _keep: KeepAlive,
}

/// Whether to refuse a frame, given its first [`HEAD_BYTES`] bytes (fewer
/// if the frame is shorter) and its length.
pub(crate) type Refuse = Arc<dyn Fn(&[u8], usize) -> bool + Send + Sync>;

/// Bytes of a frame's head a [`Refuse`] check sees (a message kind's tag).
pub(crate) const HEAD_BYTES: usize = 4;

impl std::fmt::Debug for FrameReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReceiver")
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("buffered", &self.buffered.len())
            .field("pending", &self.pending)
            .field("skipping", &self.skipping)
            .field("refusing", &self.refuse.is_some())
            .finish_non_exhaustive()
    }
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
            buffered: Bytes::new(),
            assembly: None,
            pending: None,
            skipping: 0,
            refuse: None,
            _keep: keep,
        }
    }

    /// Refuses frames `refuse` says no to as soon as their head has arrived:
    /// their bytes are read and thrown away as they come, never buffered
    /// whole, and counted (`oversized_for_kind`). A peer that sends 60 MB
    /// frames of a kind whose honest messages are small costs the reading,
    /// not 60 MB of memory and a copy each (issue 10, item 6).
    pub(crate) fn refusing(mut self, refuse: Refuse) -> FrameReceiver {
        self.refuse = Some(refuse);
        self
    }

    /// The next frame, or `None` when the sender finished the stream cleanly.
    ///
    /// A length prefix above `max_frame_bytes` closes the whole connection
    /// (the sender is broken or hostile), is counted, and returns
    /// [`TransportError::FrameTooLarge`]. A stream that ends inside a frame
    /// returns [`TransportError::TruncatedFrame`].
    ///
    /// Cancel-safe: what a cancelled call had read stays buffered (with the
    /// prefix already parsed), so a caller may wait for a frame under a
    /// timeout (the client service's idle timeout does) and call again.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        loop {
            self.skip().await?;
            let length = match self.pending {
                Some(length) => length,
                None => match self.read_prefix().await? {
                    Some(length) => length,
                    None => return Ok(None),
                },
            };
            self.pending = Some(length);
            if !self.refused(length).await? {
                return self.read_body(length).await;
            }
        }
    }

    /// Whether the frame of `length` whose prefix was just read is refused
    /// by its head (then it is being skipped). Asked again for the same
    /// frame after a cancelled `recv`, which gives the same answer: the
    /// check may itself have been what was cancelled.
    async fn refused(&mut self, length: usize) -> Result<bool, TransportError> {
        let Some(refuse) = self.refuse.clone() else {
            return Ok(false);
        };
        let head = length.min(HEAD_BYTES);
        if !self.fill(head).await? {
            return Err(TransportError::TruncatedFrame {
                expected: length,
                received: self.buffered.len(),
            });
        }
        if !refuse(self.buffered.get(..head).unwrap_or_default(), length) {
            return Ok(false);
        }
        self.counters.oversized_for_kind.increment();
        self.pending = None;
        self.skipping = length;
        Ok(true)
    }

    /// Reads and throws away what is left of a refused frame.
    async fn skip(&mut self) -> Result<(), TransportError> {
        while self.skipping > 0 {
            if self.buffered.is_empty() {
                match self.recv.read_chunk(self.skipping, true).await {
                    Ok(Some(chunk)) => self.buffered = chunk.bytes,
                    Ok(None) => {
                        return Err(TransportError::TruncatedFrame {
                            expected: self.skipping,
                            received: 0,
                        })
                    }
                    Err(source) => return Err(TransportError::Read { source }),
                }
            }
            let dropped = self.skipping.min(self.buffered.len());
            let _ = self.buffered.split_to(dropped);
            self.skipping -= dropped;
        }
        Ok(())
    }

    async fn read_body(&mut self, length: usize) -> Result<Option<Bytes>, TransportError> {
        if !self.fill(length).await? {
            return Err(TransportError::TruncatedFrame {
                expected: length,
                received: self.buffered.len(),
            });
        }
        self.pending = None;
        let frame = self.buffered.split_to(length);
        if self.count_as_client {
            self.counters.client_frames_in.increment();
        }
        Ok(Some(frame))
    }

    /// Reads and checks the next length prefix; `None` at a clean end.
    async fn read_prefix(&mut self) -> Result<Option<usize>, TransportError> {
        if !self.fill(PREFIX_BYTES).await? {
            return if self.buffered.is_empty() {
                Ok(None)
            } else {
                Err(TransportError::TruncatedFrame {
                    expected: PREFIX_BYTES,
                    received: self.buffered.len(),
                })
            };
        }
        let prefix = self.buffered.split_to(PREFIX_BYTES);
        let mut length_bytes = [0u8; PREFIX_BYTES];
        length_bytes.copy_from_slice(&prefix);
        let length = u64::from(u32::from_le_bytes(length_bytes));
        if length > self.max_frame_bytes as u64 {
            self.counters.oversized_received.increment();
            if self.count_as_client {
                self.counters.client_oversized_received.increment();
            }
            self.connection
                .close(close_code::FRAME_TOO_LARGE, b"frame too large");
            return Err(TransportError::FrameTooLarge {
                length,
                max_frame_bytes: self.max_frame_bytes,
            });
        }
        // Fits in usize: it is at most `max_frame_bytes`.
        Ok(Some(length as usize))
    }

    /// Reads until at least `wanted` bytes are buffered; `false` if the
    /// stream ended first.
    ///
    /// Reads whole chunks, as quinn received them: one call (one lock of the
    /// connection) yields every frame a packet carried, and a frame inside
    /// one chunk is handed on without a copy. Only a frame split across
    /// chunks is copied together, into a buffer that grows as its bytes
    /// arrive, never ahead of them (`wanted` comes from the peer).
    async fn fill(&mut self, wanted: usize) -> Result<bool, TransportError> {
        loop {
            let have = self
                .assembly
                .as_ref()
                .map_or(self.buffered.len(), BytesMut::len);
            if have >= wanted {
                if let Some(assembly) = self.assembly.take() {
                    self.buffered = assembly.freeze();
                }
                return Ok(true);
            }
            let chunk = match self.recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => chunk.bytes,
                Ok(None) => {
                    if let Some(assembly) = self.assembly.take() {
                        self.buffered = assembly.freeze();
                    }
                    return Ok(false);
                }
                Err(source) => return Err(TransportError::Read { source }),
            };
            match self.assembly.as_mut() {
                None if self.buffered.is_empty() => self.buffered = chunk,
                None => {
                    let mut started = BytesMut::with_capacity(
                        wanted
                            .min(INITIAL_BODY_BYTES)
                            .max(self.buffered.len() + chunk.len()),
                    );
                    started.extend_from_slice(&self.buffered);
                    started.extend_from_slice(&chunk);
                    self.buffered = Bytes::new();
                    self.assembly = Some(started);
                }
                Some(assembly) => {
                    // Grow to at most `wanted`: `extend_from_slice` would
                    // double the capacity, and a 33 MiB frame would then sit
                    // in the inbound queue holding 64 MiB, counted as 33.
                    let needed = assembly.len() + chunk.len();
                    if needed > assembly.capacity() {
                        let target = needed
                            .max(assembly.capacity().saturating_mul(2))
                            .min(wanted.max(needed));
                        let mut grown = BytesMut::with_capacity(target);
                        grown.extend_from_slice(assembly);
                        *assembly = grown;
                    }
                    assembly.extend_from_slice(&chunk);
                }
            }
        }
    }

    /// Stops the stream: the sender's writes fail from now on.
    pub fn stop(&mut self) {
        // Already stopped or finished: nothing left to stop.
        let _ = self.recv.stop(close_code::STREAM_STOPPED);
    }
}
