#!/usr/bin/env python3
"""Checks docs/client-protocol/vectors.json against docs/client-protocol.md.

An implementation of the client protocol's encodings and verification
written from the document alone: Python's hashlib and struct, and the
`cryptography` package for Ed25519. No bftd code. Run by
`cargo test -p bftd --test client_protocol`; by hand:

    python3 docs/client-protocol/check_vectors.py docs/client-protocol/vectors.json

Exits non-zero, naming the first check that failed.
"""

import hashlib
import json
import struct
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


# --- Encoding (docs/client-protocol.md, "Encoding") -----------------------

def u16(value):
    return struct.pack("<H", value)


def u32(value):
    return struct.pack("<I", value)


def u64(value):
    return struct.pack("<Q", value)


def byte_string(data):
    """Keys, digests, signatures and payloads: u64 length, then the bytes."""
    return u64(len(data)) + data


def option(data):
    return b"\x00" if data is None else b"\x01" + data


def sequence(items):
    return u64(len(items)) + b"".join(items)


# --- Digests and signatures ("Digests and signatures") --------------------

def tagged_digest(tag, data):
    tag = tag.encode()
    return hashlib.sha256(bytes([len(tag)]) + tag + data).digest()


def sign(seed, tag, message):
    return Ed25519PrivateKey.from_private_bytes(seed).sign(tagged_digest(tag, message))


def verify(public_key, signature, tag, message):
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signature, tagged_digest(tag, message)
        )
        return True
    except InvalidSignature:
        return False


def seed_of(secret_key_file):
    prefix = "bftd-secret-key:"
    assert secret_key_file.startswith(prefix)
    return bytes.fromhex(secret_key_file[len(prefix):])


def public_of(seed):
    return (
        Ed25519PrivateKey.from_private_bytes(seed)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


# --- Requests ("Requests") ------------------------------------------------

def request_bytes(client, request_id, valid_until, payload):
    return byte_string(client) + u64(request_id) + u64(valid_until) + byte_string(payload)


def signed_request_bytes(request, signature):
    return request + option(None if signature is None else byte_string(signature))


# --- Merkle tree ("Batches and Merkle proofs") ----------------------------

def leaf(signed_request):
    return tagged_digest("bftd/v1/merkle-leaf", signed_request)


def inner(left, right):
    return tagged_digest("bftd/v1/merkle-node", left + right)


def batch_digest(leaves):
    level, count = list(leaves), len(leaves)
    while len(level) > 1:
        level = [
            inner(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
            for i in range(0, len(level), 2)
        ]
    top = level[0] if level else b""
    return tagged_digest("bftd/v1/batch", u64(count) + top)


def root_from_proof(leaf_hash, index, count, siblings):
    if index >= count:
        return None
    hashed, position, width, siblings = leaf_hash, index, count, list(siblings)
    while width > 1:
        if position ^ 1 < width:
            if not siblings:
                return None
            other = siblings.pop(0)
            hashed = inner(hashed, other) if position % 2 == 0 else inner(other, hashed)
        position //= 2
        width = (width + 1) // 2
    if siblings:
        return None
    return tagged_digest("bftd/v1/batch", u64(count) + hashed)


# --- Blocks and certificates ("Blocks", "Commit certificates") ------------

def block_hash(height, prev_hash, digest):
    return tagged_digest("bftd/v1/block", u64(height) + prev_hash + digest)


def commit_bytes(view, seq, digest):
    return u64(view) + u64(seq) + byte_string(digest)


def certificate_ok(committee, quorum, view, seq, digest, votes, height, expected_digest):
    if seq != height or digest != expected_digest:
        return False
    signers = [vote["signer"] for vote in votes]
    if any(b <= a for a, b in zip(signers, signers[1:])):
        return False
    if any(s >= len(committee) for s in signers) or len(votes) < quorum:
        return False
    message = commit_bytes(view, seq, digest)
    return all(
        verify(committee[v["signer"]], v["signature"], "bftd/v1/commit", message)
        for v in votes
    )


def certificate_bytes(view, seq, digest, votes):
    return commit_bytes(view, seq, digest) + sequence(
        [u16(v["signer"]) + byte_string(v["signature"]) for v in votes]
    )


# --- The checks -----------------------------------------------------------

def main(path):
    with open(path) as file:
        vectors = json.load(file)
    h = bytes.fromhex
    checks = []

    def check(name, ok):
        checks.append(name)
        if not ok:
            print(f"FAILED: {name}")
            sys.exit(1)

    committee = [h(node["public_key"]) for node in vectors["committee"]["nodes"]]
    quorum = vectors["committee"]["quorum"]
    lifetime = vectors["committee"]["request_lifetime"]
    for node in vectors["committee"]["nodes"]:
        check(f"node {node['id']} key file", public_of(seed_of(node["secret_key_file"])) == h(node["public_key"]))
    client_seed = seed_of(vectors["client"]["secret_key_file"])
    client = h(vectors["client"]["public_key"])
    check("client key file", public_of(client_seed) == client)

    signed_requests, leaves = [], []
    for i, r in enumerate(vectors["requests"]):
        encoded = request_bytes(h(r["client"]), r["request_id"], r["valid_until"], h(r["payload"]))
        check(f"request {i} bytes", encoded == h(r["request_bytes"]))
        check(f"request {i} signing digest", tagged_digest("bftd/v1/request", encoded) == h(r["signing_digest"]))
        check(f"request {i} signature (Ed25519 is deterministic)", sign(client_seed, "bftd/v1/request", encoded) == h(r["signature"]))
        check(f"request {i} signature verifies", verify(client, h(r["signature"]), "bftd/v1/request", encoded))
        signed = signed_request_bytes(encoded, h(r["signature"]))
        check(f"signed request {i} bytes", signed == h(r["signed_request_bytes"]))
        check(f"merkle leaf {i}", leaf(signed) == h(r["merkle_leaf"]))
        signed_requests.append(signed)
        leaves.append(leaf(signed))

    grant = vectors["grant"]
    check("grant bytes", u16(grant["node"]) == h(grant["grant_bytes"]))
    check("grant signature", sign(client_seed, "bftd/v1/grant", u16(grant["node"])) == h(grant["signature"]))

    block = vectors["block"]
    digest = h(block["batch_digest"])
    check("batch digest from the requests", batch_digest(leaves) == digest)
    check("block hash", block_hash(block["height"], h(block["prev_hash"]), digest) == h(block["hash"]))
    cert = block["certificate"]
    votes = [{"signer": v["signer"], "signature": h(v["signature"])} for v in cert["votes"]]
    check("commit bytes", commit_bytes(cert["view"], cert["seq"], digest) == h(cert["commit_bytes"]))
    check("commit signing digest", tagged_digest("bftd/v1/commit", h(cert["commit_bytes"])) == h(cert["signing_digest"]))
    check("certificate verifies", certificate_ok(committee, quorum, cert["view"], cert["seq"], digest, votes, block["height"], digest))
    check("certificate of 2 votes refused", not certificate_ok(committee, quorum, cert["view"], cert["seq"], digest, votes[:2], block["height"], digest))
    check("certificate with a repeated signer refused", not certificate_ok(committee, quorum, cert["view"], cert["seq"], digest, [votes[0], votes[0], votes[1]], block["height"], digest))
    forged = dict(votes[2], signature=bytes(64))
    check("certificate with a forged vote refused", not certificate_ok(committee, quorum, cert["view"], cert["seq"], digest, votes[:2] + [forged], block["height"], digest))
    check("certificate for another height refused", not certificate_ok(committee, quorum, cert["view"], cert["seq"], digest, votes, block["height"] + 1, digest))

    receipt = vectors["receipt"]
    i = receipt["for_request"]
    r = vectors["requests"][i]
    siblings = [h(s) for s in receipt["siblings"]]
    check("receipt proof leads to the batch digest", root_from_proof(leaves[i], receipt["index"], receipt["count"], siblings) == digest)
    check("receipt proof refuses another request", root_from_proof(leaves[0], receipt["index"], receipt["count"], siblings) != digest)
    check("request valid at the receipt's height", block["height"] <= r["valid_until"] <= block["height"] + lifetime)

    frames = vectors["frames"]
    check("submit frame", u32(0) + signed_requests[0] == h(frames["client_submit"]))
    check("subscribe frame", u32(1) + u64(1) == h(frames["client_subscribe_from_1"]))
    check("status frame", u32(2) == h(frames["client_status"]))
    certificate = certificate_bytes(cert["view"], cert["seq"], digest, votes)
    receipt_frame = (
        u32(0) + u64(r["request_id"]) + u64(block["height"]) + byte_string(h(block["prev_hash"]))
        + byte_string(digest) + u64(receipt["index"]) + u64(receipt["count"])
        + sequence([byte_string(s) for s in siblings]) + certificate
    )
    check("receipt frame", receipt_frame == h(frames["node_receipt"]))
    block_frame = (
        u32(2) + u64(block["height"]) + byte_string(h(block["prev_hash"])) + byte_string(digest)
        + sequence(signed_requests) + certificate + sequence([])
    )
    check("block frame", block_frame == h(frames["node_block"]))
    print(f"ok: {len(checks)} checks passed")


if __name__ == "__main__":
    main(sys.argv[1])
