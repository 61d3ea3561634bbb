"""The cluster file (`bftd`'s cluster.toml): node ids, addresses, public
keys, optional gRPC addresses, and the `[protocol]` settings clients trust.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .protocol import Committee

#: `[protocol] request_lifetime` when the cluster file does not set it.
DEFAULT_REQUEST_LIFETIME = 1024


@dataclass(frozen=True)
class ClusterNode:
    id: int
    address: str
    public_key: bytes
    grpc: Optional[str]


@dataclass(frozen=True)
class Cluster:
    nodes: Dict[int, ClusterNode]
    committee: Committee
    request_mode: str

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Cluster":
        """Reads and checks a cluster file."""
        with open(path, "rb") as file:
            data = tomllib.load(file)
        protocol = data.get("protocol", {})
        nodes = {}
        for entry in data.get("node", []):
            key = bytes.fromhex(entry["public_key"])
            if len(key) != 32:
                raise ValueError(f"{path}: node {entry['id']}'s public_key is not 64 hex digits")
            nodes[entry["id"]] = ClusterNode(
                entry["id"], entry["address"], key, entry.get("grpc")
            )
        if sorted(nodes) != list(range(len(nodes))) or len(nodes) % 3 != 1:
            raise ValueError(f"{path}: node ids must be 0..n-1 with n = 3f + 1")
        committee = Committee(
            tuple(nodes[i].public_key for i in range(len(nodes))),
            int(protocol.get("request_lifetime", DEFAULT_REQUEST_LIFETIME)),
        )
        mode = protocol.get("request_mode", "client-signed")
        return cls(nodes, committee, mode)
