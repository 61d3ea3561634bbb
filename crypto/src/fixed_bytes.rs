//! Serde for fixed-size byte strings (keys, signatures, digests) as *bytes*,
//! not as tuples of `u8`.
//!
//! serde encodes `[u8; N]` element by element; in bincode that costs a call
//! per byte, and a batch of 1,000 client-signed requests carries ~96,000 such
//! bytes. As a byte string each value is one length-checked copy (measured:
//! see BENCHMARKS.md, `batch_1000x512B/decode`), at the price of an 8-byte
//! length prefix. A length other than N is refused, so the encoding stays
//! canonical.

macro_rules! serde_as_bytes {
    ($type:ident, $len:literal) => {
        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_bytes(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(
                deserializer: D,
            ) -> Result<$type, D::Error> {
                struct Visitor;
                impl<'de> serde::de::Visitor<'de> for Visitor {
                    type Value = $type;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        write!(f, "{} bytes", $len)
                    }
                    fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<$type, E> {
                        <[u8; $len]>::try_from(bytes)
                            .map($type)
                            .map_err(|_| E::invalid_length(bytes.len(), &self))
                    }
                    fn visit_seq<A: serde::de::SeqAccess<'de>>(
                        self,
                        mut seq: A,
                    ) -> Result<$type, A::Error> {
                        // Formats without a native byte string (JSON) send a
                        // sequence of numbers.
                        let mut out = [0u8; $len];
                        for (index, byte) in out.iter_mut().enumerate() {
                            *byte = seq
                                .next_element()?
                                .ok_or_else(|| serde::de::Error::invalid_length(index, &self))?;
                        }
                        if seq.next_element::<u8>()?.is_some() {
                            return Err(serde::de::Error::invalid_length($len + 1, &self));
                        }
                        Ok($type(out))
                    }
                }
                deserializer.deserialize_bytes(Visitor)
            }
        }
    };
}

pub(crate) use serde_as_bytes;
