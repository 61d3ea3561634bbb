#!/usr/bin/env python3
"""Checks the Python client against a running 4-node cluster whose node 3
runs `--byzantine lie-to-clients` (testnet/tests/python_client.rs starts
it; by hand: `bftnet up --byzantine 3=lie-to-clients`, then
`python3 cluster_check.py DIR/cluster.toml`).

1. 1,000 transactions through node 0, every receipt verified;
2. blocks 1..N from nodes 0 and 1: identical verified streams;
3. two kv_store instances (nodes 0 and 1) end in the same state;
4. node 3's receipt for an already committed request is refused, with an
   error naming the failed check.
Prints one line per step; exits non-zero naming the step that failed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from bftd_client import Client, VerificationError  # noqa: E402
from kv_store import replicate  # noqa: E402

TRANSACTIONS = 1000


def fail(step: str, why: str) -> None:
    print(f"FAILED: {step}: {why}")
    sys.exit(1)


def main(cluster_file: str) -> None:
    started = time.monotonic()
    with Client(cluster_file, 0) as client:
        payloads = [f"set key{i % 50} value{i}".encode() for i in range(TRANSACTIONS)]
        valid_until = client.status().height + client.committee.request_lifetime // 2
        requests = [client.sign(p, valid_until) for p in payloads]
        receipts = client.submit_requests(requests)
        if len(receipts) != TRANSACTIONS or len({r.request_id for r in receipts}) != TRANSACTIONS:
            fail("submit", "not one verified receipt per transaction")
        top = max(r.height for r in receipts)
        elapsed = time.monotonic() - started
        print(f"ok: {TRANSACTIONS} receipts verified through node 0 in {elapsed:.1f} s, heights up to {top}")

    streams = []
    for node in (0, 1):
        with Client(cluster_file, node) as client:
            blocks = list(client.blocks(1, to_height=top))
        if [b.height for b in blocks] != list(range(1, top + 1)):
            fail("blocks", f"node {node} did not give blocks 1..{top}")
        streams.append([(b.height, b.hash, [r.signed_bytes() for r in b.executed]) for b in blocks])
    if streams[0] != streams[1]:
        fail("blocks", "nodes 0 and 1 gave different verified streams")
    executed = sum(len(b[2]) for b in streams[0])
    committed = {r.height for r in receipts}
    if executed < TRANSACTIONS or not committed <= {b[0] for b in streams[0]}:
        fail("blocks", f"the stream holds {executed} executed requests, fewer than were receipted")
    print(f"ok: blocks 1..{top} from nodes 0 and 1 are identical and verified ({executed} executed requests)")

    stores = [replicate(cluster_file, node, top) for node in (0, 1)]
    if stores[0].data != stores[1].data or not stores[0].data:
        fail("kv_store", "the two replicas differ (or are empty)")
    print(f"ok: kv_store replicas from nodes 0 and 1 agree: {len(stores[0].data)} keys, state {stores[0].digest()[:16]}")

    # Re-sending a committed request is the retry mechanism: an honest node
    # answers with its receipt; the liar names a block 1 to 5 heights later,
    # which must exist for it to build a receipt from.
    with Client(cluster_file, 0) as client:
        while client.status().height < receipts[0].height + 6:
            client.submit(b"noop")
    with Client(cluster_file, 3, timeout=30) as liar:
        try:
            liar.submit_requests([requests[0]])
        except VerificationError as error:
            print(f"ok: node 3 (lie-to-clients) receipt refused: {error}")
        else:
            fail("liar", "node 3's receipt was accepted")


if __name__ == "__main__":
    main(sys.argv[1])
