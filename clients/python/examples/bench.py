#!/usr/bin/env python3
"""Committed tx/s and latency through the gRPC API from Python, every
receipt verified (BENCHMARKS.md, "Client APIs").

Keeps `--window` requests in flight on one `Submit` stream per node given,
for `--duration` seconds, and reports committed (verified) tx/s and the
p50/p99 of submit -> verified receipt.

    python3 bench.py CLUSTER_FILE --nodes 0 1 2 3 --duration 10 --window 500
"""

from __future__ import annotations

import argparse
import json
import queue
import threading
import time
from typing import Dict, List, Tuple

import grpc

from bftd_client import Client, verify_receipt
from bftd_client.client import CertifiedCache
from bftd_client.v1 import bftd_pb2, bftd_pb2_grpc


def run_stream(client: Client, duration: float, window: int, size: int, out: List[float], counts: Dict[str, int]) -> None:
    """One Submit stream: refills the window as verified receipts arrive."""
    stub = bftd_pb2_grpc.OrderingStub(client._channel)
    half_life = client.committee.request_lifetime // 2
    # A list so send_one sees updates: moved forward with every receipt, as
    # a long run passes many heights (a fixed one would expire).
    valid_until = [client.status().height + half_life]
    outgoing: "queue.Queue" = queue.Queue()
    sent: Dict[int, Tuple[float, object]] = {}
    certified = CertifiedCache()
    payload = bytes(size)
    deadline = time.monotonic() + duration

    def send_one() -> None:
        request = client.sign(payload, valid_until[0])
        sent[request.request_id] = (time.monotonic(), request)
        outgoing.put(bftd_pb2.SubmitRequest(signed_request=request.signed_bytes()))

    def feed():
        while True:
            item = outgoing.get()
            if item is None:
                return
            yield item

    for _ in range(window):
        send_one()
    call = stub.Submit(feed())
    try:
        for reply in call:
            now = time.monotonic()
            if reply.WhichOneof("reply") == "receipt":
                entry = sent.pop(reply.receipt.request_id, None)
                if entry is None:
                    continue
                verify_receipt(client.committee, entry[1], reply.receipt, certified)
                valid_until[0] = max(valid_until[0], reply.receipt.height + half_life)
                if now <= deadline:
                    out.append(now - entry[0])
                    counts["committed"] += 1
            else:
                sent.pop(reply.rejection.request_id, None)
                counts["rejected"] += 1
            if now < deadline:
                send_one()
            elif not sent:
                break
            elif now > deadline + 5:
                break
    except grpc.RpcError as error:
        counts["errors"] += 1
        print(f"stream error: {error.code()}: {error.details()}")
    finally:
        outgoing.put(None)
        call.cancel()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cluster_file")
    parser.add_argument("--nodes", type=int, nargs="+", default=[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--window", type=int, default=500, help="requests in flight per stream")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    latencies: List[float] = []
    counts = {"committed": 0, "rejected": 0, "errors": 0}
    clients = [Client(args.cluster_file, node) for node in args.nodes]
    threads = [
        threading.Thread(target=run_stream, args=(c, args.duration, args.window, args.size, latencies, counts))
        for c in clients
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies.sort()

    def pct(p: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else float("nan")

    report = {
        "committed_tx_per_s": counts["committed"] / args.duration,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "rejected": counts["rejected"],
        "stream_errors": counts["errors"],
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"python gRPC: {report['committed_tx_per_s']:.0f} tx/s committed (verified), "
            f"p50 {report['p50_ms']:.1f} ms, p99 {report['p99_ms']:.1f} ms, "
            f"{counts['rejected']} rejected, {counts['errors']} stream errors"
        )


if __name__ == "__main__":
    main()
