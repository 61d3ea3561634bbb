//! The one place that knows the wire encoding.
//!
//! bincode 1.3 with fixed-width little-endian integers, a size limit, and
//! trailing bytes refused. This encoding is *canonical* for bftd's types:
//! decoding refuses anything that would not re-encode to the same bytes
//! (trailing bytes, non-0/1 bools and option tags, unknown enum variants,
//! invalid UTF-8), so verifying a signature over the re-encoding of a decoded
//! value is the same as verifying it over the received bytes. A property test
//! (`decode_then_encode_is_identity`) and the fuzz targets (`fuzz/`) hold this
//! line. One exception, never signed nor sent: the store's `SafetyState`
//! holds a map, which decodes from its keys in any order.
//!
//! bincode is flagged unmaintained (RUSTSEC-2025-0141); its authors consider
//! 1.3.3 complete. Keeping every use behind this module makes a switch
//! (postcard, wincode) a one-file change.

use bincode::Options;
use serde::{de::DeserializeOwned, Serialize};

/// Largest message bftd will encode or decode: 64 MiB. Bounds every
/// allocation a decoder can make, whatever a length prefix claims.
pub const MAX_MESSAGE_BYTES: u64 = 64 * 1024 * 1024;

/// Why bytes could not be decoded (or a value encoded).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes are not a valid encoding of the expected type, or exceed the
    /// size limit.
    #[error("malformed or oversized message: {source}")]
    Malformed {
        /// The decoder's own report.
        #[from]
        source: bincode::Error,
    },
}

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .with_limit(MAX_MESSAGE_BYTES)
        .reject_trailing_bytes()
}

/// Encodes `value`. Fails only if the encoding would exceed
/// [`MAX_MESSAGE_BYTES`].
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(options().serialize(value)?)
}

/// Encodes `value` into `buffer` (cleared first), reusing its allocation.
pub fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    buffer: &mut Vec<u8>,
) -> Result<(), CodecError> {
    buffer.clear();
    Ok(options().serialize_into(buffer, value)?)
}

/// Encodes `value` at the end of `buffer`, after what it holds.
pub fn encode_append<T: Serialize + ?Sized>(
    value: &T,
    buffer: &mut Vec<u8>,
) -> Result<(), CodecError> {
    Ok(options().serialize_into(buffer, value)?)
}

/// The encoded size of `value`, without encoding it.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<u64, CodecError> {
    Ok(options().serialized_size(value)?)
}

/// Decodes a `T` from exactly `bytes`. Never panics; never allocates more than
/// the input can justify (bounded by [`MAX_MESSAGE_BYTES`]).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    Ok(options().deserialize(bytes)?)
}
