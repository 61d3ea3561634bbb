"""A bftd client over gRPC that trusts nothing the node says: every receipt
and block is verified against the cluster's public keys
(docs/client-protocol.md sections 6, 7 and 9)."""

from __future__ import annotations

import queue
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import grpc

from .cluster import Cluster
from .keys import SigningKey
from .protocol import (
    Committee,
    DecodeError,
    ExecutedTracker,
    Request,
    VerificationError,
    ZERO_HASH,
    batch_digest,
    block_hash,
    check_validity,
    decode_signed_request,
    merkle_leaf,
    root_from_proof,
    verify_certificate,
)
from .v1 import bftd_pb2, bftd_pb2_grpc

#: How long to wait before re-sending a request the node was too busy for.
BUSY_RETRY_SECONDS = 0.05


class Rejected(Exception):
    """The node refused a request (advice from one node, proves nothing).
    `code` is the `RejectCode` name, e.g. ``"EXPIRED"``."""

    def __init__(self, request_id: int, code: str, message: str) -> None:
        super().__init__(f"request {request_id} rejected ({code}): {message}")
        self.request_id = request_id
        self.code = code


@dataclass(frozen=True)
class Receipt:
    """A verified receipt: the request executed exactly once, at `height`
    or (if the node answered with a later copy) earlier."""

    request_id: int
    height: int
    batch_digest: bytes
    prev_hash: bytes
    signers: Tuple[int, ...]


@dataclass(frozen=True)
class Block:
    """A verified committed block."""

    height: int
    hash: bytes
    prev_hash: bytes
    batch_digest: bytes
    requests: Tuple[Request, ...]
    duplicates: Tuple[int, ...]

    @property
    def executed(self) -> List[Request]:
        """The requests that execute here, in order (duplicates skipped)."""
        skip = set(self.duplicates)
        return [r for i, r in enumerate(self.requests) if i not in skip]


def _certificate_votes(certificate: "bftd_pb2.CommitCertificate") -> List[Tuple[int, bytes]]:
    return [(vote.signer, bytes(vote.signature)) for vote in certificate.votes]


class CertifiedCache:
    """`(height, batch_digest)` pairs whose certificate verified, the most
    recent `capacity`: receipts of one block share a certificate, so it is
    checked once (a pair certified is certified, whatever votes a later copy
    carries)."""

    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self._pairs: "OrderedDict[Tuple[int, bytes], None]" = OrderedDict()

    def __contains__(self, pair: Tuple[int, bytes]) -> bool:
        return pair in self._pairs

    def add(self, pair: Tuple[int, bytes]) -> None:
        self._pairs[pair] = None
        while len(self._pairs) > self.capacity:
            self._pairs.popitem(last=False)


def verify_receipt(
    committee: Committee,
    request: Request,
    receipt: "bftd_pb2.Receipt",
    certified: Optional[CertifiedCache] = None,
) -> Receipt:
    """Checks a receipt for `request` (section 6, steps 1 to 4); raises
    VerificationError naming the first check that failed. `certified`, if
    given, skips certificates already verified for the same height and
    batch digest."""
    if receipt.request_id != request.request_id:
        raise VerificationError(
            f"receipt is for request {receipt.request_id}, not {request.request_id}"
        )
    height = receipt.height
    if not check_validity(height, request.valid_until, committee.request_lifetime):
        raise VerificationError(
            f"request valid through height {request.valid_until} cannot execute at height {height}"
        )
    digest = bytes(receipt.batch_digest)
    proof = receipt.proof
    root = root_from_proof(
        merkle_leaf(request.signed_bytes()),
        proof.index,
        proof.count,
        [bytes(s) for s in proof.siblings],
    )
    if root != digest:
        raise VerificationError(
            f"Merkle proof does not lead from the request to the batch digest of height {height}: "
            "the request is not in the block the receipt names"
        )
    if not receipt.HasField("certificate"):
        raise VerificationError(f"receipt for height {height} has no commit certificate")
    cert = receipt.certificate
    if certified is None or (height, digest) not in certified:
        verify_certificate(
            committee, cert.view, cert.seq, bytes(cert.digest), _certificate_votes(cert), height, digest
        )
        if certified is not None:
            certified.add((height, digest))
    return Receipt(
        request.request_id,
        height,
        digest,
        bytes(receipt.prev_hash),
        tuple(v.signer for v in cert.votes),
    )


class BlockVerifier:
    """Section 7's checks over a stream of blocks: heights in order, the hash
    chain, batch digests, certificates and the duplicate rule."""

    def __init__(self, committee: Committee, first: int) -> None:
        self.committee = committee
        self.expected = first
        self.prev: Optional[bytes] = None if first > 1 else ZERO_HASH
        self.tracker = ExecutedTracker(committee.request_lifetime)

    def check(self, message: "bftd_pb2.Block") -> Block:
        height = message.height
        if height != self.expected:
            raise VerificationError(f"block at height {height}, expected {self.expected}")
        prev_hash = bytes(message.prev_hash)
        if self.prev is not None and prev_hash != self.prev:
            raise VerificationError(
                f"block {height}'s prev_hash is not the hash of block {height - 1}: the hash chain is broken"
            )
        try:
            requests = tuple(decode_signed_request(bytes(r)) for r in message.requests)
        except DecodeError as error:
            raise VerificationError(f"block {height} holds a malformed request: {error}") from error
        digest = bytes(message.batch_digest)
        if batch_digest([merkle_leaf(bytes(r)) for r in message.requests]) != digest:
            raise VerificationError(f"block {height}'s requests do not hash to its batch digest")
        if not message.HasField("certificate"):
            raise VerificationError(f"block {height} has no commit certificate")
        cert = message.certificate
        verify_certificate(
            self.committee, cert.view, cert.seq, bytes(cert.digest), _certificate_votes(cert), height, digest
        )
        duplicates = self.tracker.apply(height, requests)
        if list(message.duplicates) != duplicates:
            raise VerificationError(
                f"block {height}'s duplicate list {list(message.duplicates)} is not the spec's {duplicates}"
            )
        block = Block(height, block_hash(height, prev_hash, digest), prev_hash, digest, requests, tuple(duplicates))
        self.prev = block.hash
        self.expected = height + 1
        return block


class Client:
    """A client of one bftd node's gRPC API (`[grpc] listen`).

    `cluster_file` is the cluster's file (it must list the node's `grpc`
    address unless `address` is given); `key` signs requests (a fresh one if
    omitted). Nothing the node says is believed unverified.
    """

    def __init__(
        self,
        cluster_file: Union[str, Path],
        node: int,
        key: Optional[SigningKey] = None,
        address: Optional[str] = None,
        timeout: float = 60.0,
    ) -> None:
        self.cluster = Cluster.load(cluster_file)
        if node not in self.cluster.nodes:
            raise ValueError(f"node {node} is not in {cluster_file}")
        if self.cluster.request_mode != "client-signed":
            raise ValueError(
                f"{cluster_file}: the cluster is {self.cluster.request_mode}; the gRPC API "
                "accepts client-signed requests only (docs/client-protocol.md section 9)"
            )
        target = address or self.cluster.nodes[node].grpc
        if not target:
            raise ValueError(
                f"{cluster_file} gives no grpc address for node {node}: pass address=, or add "
                f'grpc = "host:port" to its [[node]] entry (the node file\'s [grpc] listen)'
            )
        self.node = node
        self.key = key or SigningKey.generate()
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            target, options=[("grpc.max_receive_message_length", -1)]
        )
        self._stub = bftd_pb2_grpc.OrderingStub(self._channel)
        # Never reused for another payload: a random start, counting up.
        self._next_id = random.getrandbits(63)
        self._lock = threading.Lock()
        self._certified = CertifiedCache()

    @property
    def committee(self) -> Committee:
        return self.cluster.committee

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def status(self) -> "bftd_pb2.NodeStatus":
        """The node's status: unverified advice (to pick `valid_until`)."""
        # wait_for_ready: a node just started may not listen yet (bounded by
        # the timeout).
        return self._stub.Status(
            bftd_pb2.StatusRequest(), timeout=self.timeout, wait_for_ready=True
        )

    def sign(self, payload: bytes, valid_until: Optional[int] = None) -> Request:
        """A signed request for `payload` with a fresh id; `valid_until`
        defaults to the node's height plus half the request lifetime."""
        if valid_until is None:
            valid_until = self.status().height + self.committee.request_lifetime // 2
        with self._lock:
            request_id = self._next_id
            self._next_id += 1
        unsigned = Request(self.key.public_key, request_id, valid_until, bytes(payload))
        return Request(
            unsigned.client,
            request_id,
            valid_until,
            unsigned.payload,
            self.key.sign_request(unsigned.request_bytes()),
        )

    def submit(self, payload: bytes) -> Receipt:
        """Orders `payload` and returns its verified receipt; raises
        :class:`Rejected` or :class:`VerificationError`."""
        return self.submit_many([payload])[0]

    def submit_many(self, payloads: Iterable[bytes]) -> List[Receipt]:
        """Orders every payload over one stream (pipelined) and returns
        their verified receipts, in the payloads' order."""
        payloads = list(payloads)
        if not payloads:
            return []
        valid_until = self.status().height + self.committee.request_lifetime // 2
        return self.submit_requests([self.sign(p, valid_until) for p in payloads])

    def submit_requests(self, requests: Sequence[Request]) -> List[Receipt]:
        """Sends signed requests over one stream; re-sends those the node was
        busy for; verifies every receipt."""
        outgoing: "queue.Queue[Optional[bytes]]" = queue.Queue()
        for request in requests:
            outgoing.put(request.signed_bytes())

        def feed() -> Iterator["bftd_pb2.SubmitRequest"]:
            while True:
                item = outgoing.get()
                if item is None:
                    return
                yield bftd_pb2.SubmitRequest(signed_request=item)

        pending: Dict[int, Request] = {r.request_id: r for r in requests}
        receipts: Dict[int, Receipt] = {}
        call = self._stub.Submit(feed(), timeout=self.timeout)
        try:
            for reply in call:
                kind = reply.WhichOneof("reply")
                if kind == "receipt":
                    request = pending.pop(reply.receipt.request_id, None)
                    if request is None:
                        continue  # an answer to a re-sent copy, or noise
                    receipts[request.request_id] = verify_receipt(
                        self.committee, request, reply.receipt, self._certified
                    )
                elif kind == "rejection":
                    rejection = reply.rejection
                    code = bftd_pb2.RejectCode.Name(rejection.code)
                    request = pending.get(rejection.request_id)
                    if request is None:
                        raise Rejected(rejection.request_id, code, rejection.message)
                    if code == "BUSY":
                        data = request.signed_bytes()
                        threading.Timer(BUSY_RETRY_SECONDS, outgoing.put, (data,)).start()
                        continue
                    raise Rejected(rejection.request_id, code, rejection.message)
                if not pending:
                    break
        finally:
            outgoing.put(None)
            call.cancel()
        if pending:
            raise TimeoutError(f"{len(pending)} requests got no answer before the stream ended")
        return [receipts[r.request_id] for r in requests]

    def blocks(self, from_height: int = 1, to_height: Optional[int] = None) -> Iterator[Block]:
        """Verified committed blocks from `from_height` on (through
        `to_height`, if given, else forever). To apply the duplicate rule it
        reads from `request_lifetime` heights earlier, yielding only from
        `from_height`; resumes where it was when the node ends the stream
        (a slow reader) or the connection drops."""
        start = max(1, from_height - self.committee.request_lifetime)
        verifier = BlockVerifier(self.committee, start)
        next_height = start
        while to_height is None or next_height <= to_height:
            stream = self._stub.Deliver(bftd_pb2.DeliverRequest(from_height=next_height))
            try:
                for message in stream:
                    block = verifier.check(message)
                    next_height = block.height + 1
                    if block.height >= from_height:
                        yield block
                    if to_height is not None and block.height >= to_height:
                        return
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    continue  # we read too slowly: resume where we are
                raise
            finally:
                stream.cancel()
            time.sleep(BUSY_RETRY_SECONDS)
