"""The client protocol's bytes and checks (docs/client-protocol.md).

Pure functions, no I/O: the encodings of sections 1 and 5, the digests and
signatures of section 2, the Merkle proofs and certificates of section 6,
the block hash chain and duplicate rule of section 7. Every check raises
:class:`VerificationError` naming what failed; the unit tests run them on
the spec's test vectors (docs/client-protocol/vectors.json).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

REQUEST_TAG = "bftd/v1/request"
GRANT_TAG = "bftd/v1/grant"
COMMIT_TAG = "bftd/v1/commit"
LEAF_TAG = "bftd/v1/merkle-leaf"
NODE_TAG = "bftd/v1/merkle-node"
BATCH_TAG = "bftd/v1/batch"
BLOCK_TAG = "bftd/v1/block"

ZERO_HASH = bytes(32)


class VerificationError(Exception):
    """What a node sent does not prove what it claims; the message says
    which check failed. Never believe the answer; ask another node."""


class DecodeError(ValueError):
    """Bytes that are not a canonical encoding of the expected value."""


# --- Encoding (section 1) ------------------------------------------------

def u16(value: int) -> bytes:
    return struct.pack("<H", value)


def u32(value: int) -> bytes:
    return struct.pack("<I", value)


def u64(value: int) -> bytes:
    return struct.pack("<Q", value)


def byte_string(data: bytes) -> bytes:
    """Keys, digests, signatures and payloads: u64 length, then the bytes."""
    return u64(len(data)) + data


def option(data: Optional[bytes]) -> bytes:
    return b"\x00" if data is None else b"\x01" + data


def sequence(items: Sequence[bytes]) -> bytes:
    return u64(len(items)) + b"".join(items)


# --- Digests and signatures (section 2) -----------------------------------

def tagged_digest(tag: str, data: bytes) -> bytes:
    """SHA-256 over the tag's length (one byte), the tag and the data."""
    encoded = tag.encode()
    return hashlib.sha256(bytes([len(encoded)]) + encoded + data).digest()


def signature_ok(public_key: bytes, signature: bytes, tag: str, message: bytes) -> bool:
    """Whether `signature` is `public_key`'s Ed25519 signature over
    digest(tag, message)."""
    if len(signature) != 64 or len(public_key) != 32:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signature, tagged_digest(tag, message)
        )
        return True
    except (InvalidSignature, ValueError):
        return False


# --- Requests (section 5) -------------------------------------------------

@dataclass(frozen=True)
class Request:
    """A request as the cluster orders it."""

    client: bytes
    request_id: int
    valid_until: int
    payload: bytes
    signature: Optional[bytes] = None

    def request_bytes(self) -> bytes:
        """The encoding of `Request`: what a client signature covers."""
        return (
            byte_string(self.client)
            + u64(self.request_id)
            + u64(self.valid_until)
            + byte_string(self.payload)
        )

    def signed_bytes(self) -> bytes:
        """The encoding of `SignedRequest`: what is sent and hashed."""
        sig = None if self.signature is None else byte_string(self.signature)
        return self.request_bytes() + option(sig)

    @property
    def key(self) -> Tuple[bytes, int]:
        """`(client, request_id)`: executes at most once, ever."""
        return (self.client, self.request_id)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, count: int) -> bytes:
        if count < 0 or self.at + count > len(self.data):
            raise DecodeError("truncated")
        out = self.data[self.at : self.at + count]
        self.at += count
        return out

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def bytes_of(self, expected: Optional[int] = None) -> bytes:
        length = self.u64()
        if expected is not None and length != expected:
            raise DecodeError(f"a {expected}-byte field has length {length}")
        return self.take(length)


def decode_signed_request(data: bytes) -> Request:
    """Parses the encoding of a `SignedRequest`, refusing any other bytes."""
    reader = _Reader(data)
    client = reader.bytes_of(32)
    request_id = reader.u64()
    valid_until = reader.u64()
    payload = reader.bytes_of()
    tag = reader.take(1)
    if tag == b"\x00":
        signature = None
    elif tag == b"\x01":
        signature = reader.bytes_of(64)
    else:
        raise DecodeError("option tag is neither 0 nor 1")
    if reader.at != len(data):
        raise DecodeError("trailing bytes")
    return Request(client, request_id, valid_until, payload, signature)


# --- Merkle tree and proofs (section 6) -----------------------------------

def merkle_leaf(signed_request_bytes: bytes) -> bytes:
    return tagged_digest(LEAF_TAG, signed_request_bytes)


def merkle_node(left: bytes, right: bytes) -> bytes:
    return tagged_digest(NODE_TAG, left + right)


def batch_digest(leaves: Sequence[bytes]) -> bytes:
    """The batch digest of a batch whose Merkle leaves are `leaves`."""
    level = list(leaves)
    while len(level) > 1:
        level = [
            merkle_node(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
            for i in range(0, len(level), 2)
        ]
    top = level[0] if level else b""
    return tagged_digest(BATCH_TAG, u64(len(leaves)) + top)


def root_from_proof(leaf: bytes, index: int, count: int, siblings: Sequence[bytes]) -> bytes:
    """The batch digest a proof leads to from `leaf`; raises
    VerificationError if the proof is malformed."""
    if index >= count:
        raise VerificationError(f"Merkle proof index {index} is not below its count {count}")
    hashed, position, width = leaf, index, count
    remaining = list(siblings)
    while width > 1:
        if position ^ 1 < width:
            if not remaining:
                raise VerificationError("Merkle proof has too few siblings")
            other = remaining.pop(0)
            if len(other) != 32:
                raise VerificationError("Merkle proof sibling is not 32 bytes")
            hashed = merkle_node(hashed, other) if position % 2 == 0 else merkle_node(other, hashed)
        position //= 2
        width = (width + 1) // 2
    if remaining:
        raise VerificationError("Merkle proof has siblings left over")
    return tagged_digest(BATCH_TAG, u64(count) + hashed)


# --- Certificates (section 6) and blocks (section 7) ----------------------

def commit_bytes(view: int, seq: int, digest: bytes) -> bytes:
    return u64(view) + u64(seq) + byte_string(digest)


def block_hash(height: int, prev_hash: bytes, digest: bytes) -> bytes:
    return tagged_digest(BLOCK_TAG, u64(height) + prev_hash + digest)


@dataclass(frozen=True)
class Committee:
    """The cluster's public keys (node id order) and request lifetime:
    everything a client trusts."""

    keys: Tuple[bytes, ...]
    request_lifetime: int

    @property
    def f(self) -> int:
        return (len(self.keys) - 1) // 3

    @property
    def quorum(self) -> int:
        return 2 * self.f + 1


def verify_certificate(
    committee: Committee,
    view: int,
    seq: int,
    digest: bytes,
    votes: Sequence[Tuple[int, bytes]],
    height: int,
    expected_digest: bytes,
) -> None:
    """Checks a commit certificate for `height` and `expected_digest`:
    2f+1 distinct members' valid signatures over the commit."""
    if seq != height:
        raise VerificationError(f"commit certificate is for height {seq}, not {height}")
    if digest != expected_digest:
        raise VerificationError(f"commit certificate at height {height} signs another batch digest")
    signers = [signer for signer, _ in votes]
    if any(b <= a for a, b in zip(signers, signers[1:])):
        raise VerificationError(
            f"commit certificate at height {height}: signers {signers} are not strictly increasing (repeated signer)"
        )
    if len(votes) < committee.quorum:
        raise VerificationError(
            f"commit certificate at height {height} has {len(votes)} votes, {committee.quorum} (2f+1) needed"
        )
    message = commit_bytes(view, seq, digest)
    for signer, signature in votes:
        if signer >= len(committee.keys):
            raise VerificationError(f"commit certificate vote from node {signer}, not a committee member")
        if not signature_ok(committee.keys[signer], signature, COMMIT_TAG, message):
            raise VerificationError(
                f"commit certificate at height {height}: node {signer}'s signature does not verify"
            )


def check_validity(height: int, valid_until: int, lifetime: int) -> bool:
    """Whether a request with `valid_until` may execute at `height`."""
    return height <= valid_until <= height + lifetime


class ExecutedTracker:
    """Section 7's duplicate rule: which requests of a block execute. Keeps
    `(client, request_id)` keys for `request_lifetime` heights."""

    def __init__(self, lifetime: int) -> None:
        self.lifetime = lifetime
        self.executed: Dict[Tuple[bytes, int], int] = {}

    def apply(self, height: int, requests: Sequence[Request]) -> List[int]:
        """Records the block's executed requests; returns the positions of
        the others (the duplicates)."""
        duplicates = []
        for position, request in enumerate(requests):
            runs = request.key not in self.executed and check_validity(
                height, request.valid_until, self.lifetime
            )
            if runs:
                self.executed[request.key] = height
            else:
                duplicates.append(position)
        horizon = height + 1 - self.lifetime
        if horizon > 0:
            self.executed = {k: h for k, h in self.executed.items() if h >= horizon}
        return duplicates
