"""A Python client for bftd, the PBFT ordering daemon, over its gRPC API.

Every receipt and block is verified against the cluster's public keys
(docs/client-protocol.md): a node cannot make this client believe that
something committed when it did not.

    from bftd_client import Client
    with Client("cluster.toml", node=0) as client:
        receipt = client.submit(b"hello")
        for block in client.blocks(1, to_height=receipt.height):
            print(block.height, [r.payload for r in block.executed])
"""

from .client import Block, BlockVerifier, Client, Receipt, Rejected, verify_receipt
from .cluster import Cluster
from .keys import SigningKey
from .protocol import Committee, Request, VerificationError

__all__ = [
    "Block",
    "BlockVerifier",
    "Client",
    "Cluster",
    "Committee",
    "Receipt",
    "Rejected",
    "Request",
    "SigningKey",
    "VerificationError",
    "verify_receipt",
]
__version__ = "0.1.0"
