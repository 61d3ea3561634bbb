#!/usr/bin/env python3
"""A replicated key-value store fed by bftd's verified block stream.

Every instance, reading from any node, applies the same executed requests
in the same order, so all end in the same state: that is what an ordering
service is for. Commands are UTF-8 payloads:

    set KEY VALUE
    del KEY

Anything else is ignored (deterministically, by every instance).

    # one terminal: follow node 0 and print the state at each block
    python3 kv_store.py CLUSTER_FILE --node 0 --follow
    # another: write through node 1
    python3 kv_store.py CLUSTER_FILE --node 1 --set colour blue
"""

from __future__ import annotations

import argparse
import hashlib
import json
from typing import Dict, Iterable, Optional

from bftd_client import Block, Client


class KVStore:
    """The state machine: a dict, changed only by executed requests."""

    def __init__(self) -> None:
        self.data: Dict[str, str] = {}
        self.height = 0

    def apply(self, block: Block) -> None:
        """Applies one verified block's executed requests, in order."""
        for request in block.executed:
            words = request.payload.decode("utf-8", "replace").split(" ", 2)
            if len(words) == 3 and words[0] == "set":
                self.data[words[1]] = words[2]
            elif len(words) == 2 and words[0] == "del":
                self.data.pop(words[1], None)
        self.height = block.height

    def follow(self, blocks: Iterable[Block]) -> None:
        for block in blocks:
            self.apply(block)

    def digest(self) -> str:
        """A hash of the state, equal on every instance at the same height."""
        encoded = json.dumps(self.data, sort_keys=True).encode()
        return hashlib.sha256(encoded).hexdigest()


def replicate(cluster_file: str, node: int, to_height: Optional[int]) -> KVStore:
    """A store built from node `node`'s blocks 1..`to_height`."""
    store = KVStore()
    with Client(cluster_file, node) as client:
        store.follow(client.blocks(1, to_height=to_height))
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cluster_file")
    parser.add_argument("--node", type=int, default=0)
    parser.add_argument("--set", nargs=2, metavar=("KEY", "VALUE"))
    parser.add_argument("--delete", metavar="KEY")
    parser.add_argument("--follow", action="store_true", help="print the state after every block")
    parser.add_argument("--to-height", type=int, help="stop after this height")
    args = parser.parse_args()
    with Client(args.cluster_file, args.node) as client:
        if args.set or args.delete:
            command = f"set {args.set[0]} {args.set[1]}" if args.set else f"del {args.delete}"
            receipt = client.submit(command.encode())
            print(f"committed at height {receipt.height}, signed by nodes {list(receipt.signers)}")
            return
        store = KVStore()
        for block in client.blocks(1, to_height=args.to_height):
            store.apply(block)
            if args.follow:
                print(f"height {store.height}: {json.dumps(store.data, sort_keys=True)}")
        print(f"height {store.height} state {store.digest()}: {json.dumps(store.data, sort_keys=True)}")


if __name__ == "__main__":
    main()
