"""The client protocol's test vectors (docs/client-protocol/vectors.json),
checked with this package's code: encodings, signatures, Merkle proofs,
certificates, receipts and blocks, and that forgeries are refused.

Run: python -m unittest discover -s clients/python/tests
(BFTD_VECTORS may point at vectors.json when the package is elsewhere.)"""

import json
import os
import unittest
from pathlib import Path

from bftd_client import BlockVerifier, Committee, Request, SigningKey, VerificationError, verify_receipt
from bftd_client.protocol import (
    batch_digest,
    block_hash,
    commit_bytes,
    decode_signed_request,
    merkle_leaf,
    root_from_proof,
    tagged_digest,
    u16,
    verify_certificate,
)
from bftd_client.v1 import bftd_pb2

VECTORS = Path(
    os.environ.get(
        "BFTD_VECTORS",
        Path(__file__).resolve().parents[3] / "docs" / "client-protocol" / "vectors.json",
    )
)
h = bytes.fromhex


class Vectors(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.v = json.loads(VECTORS.read_text())
        cls.committee = Committee(
            tuple(h(n["public_key"]) for n in cls.v["committee"]["nodes"]),
            cls.v["committee"]["request_lifetime"],
        )
        cls.client_key = SigningKey.from_text(cls.v["client"]["secret_key_file"])
        cls.requests = [
            Request(h(r["client"]), r["request_id"], r["valid_until"], h(r["payload"]), h(r["signature"]))
            for r in cls.v["requests"]
        ]

    def certificate(self, votes=None):
        cert = self.v["block"]["certificate"]
        votes = cert["votes"] if votes is None else votes
        return bftd_pb2.CommitCertificate(
            view=cert["view"],
            seq=cert["seq"],
            digest=h(self.v["block"]["batch_digest"]),
            votes=[bftd_pb2.Vote(signer=x["signer"], signature=h(x["signature"])) for x in votes],
        )

    def test_keys(self):
        self.assertEqual(self.client_key.public_key, h(self.v["client"]["public_key"]))
        for node in self.v["committee"]["nodes"]:
            key = SigningKey.from_text(node["secret_key_file"])
            self.assertEqual(key.public_key, h(node["public_key"]))
        self.assertEqual(SigningKey.from_text(self.client_key.to_text()).public_key, self.client_key.public_key)
        with self.assertRaises(ValueError):
            SigningKey.from_text("not a key")

    def test_requests(self):
        for r, request in zip(self.v["requests"], self.requests):
            self.assertEqual(request.request_bytes(), h(r["request_bytes"]))
            self.assertEqual(tagged_digest("bftd/v1/request", request.request_bytes()), h(r["signing_digest"]))
            self.assertEqual(self.client_key.sign_request(request.request_bytes()), h(r["signature"]))
            self.assertEqual(request.signed_bytes(), h(r["signed_request_bytes"]))
            self.assertEqual(decode_signed_request(h(r["signed_request_bytes"])), request)
            self.assertEqual(merkle_leaf(request.signed_bytes()), h(r["merkle_leaf"]))
        with self.assertRaises(ValueError):
            decode_signed_request(self.requests[0].signed_bytes() + b"\x00")

    def test_grant(self):
        grant = self.v["grant"]
        self.assertEqual(u16(grant["node"]), h(grant["grant_bytes"]))
        self.assertEqual(self.client_key.sign_digest_of("bftd/v1/grant", u16(grant["node"])), h(grant["signature"]))

    def test_block_digests(self):
        block = self.v["block"]
        leaves = [merkle_leaf(r.signed_bytes()) for r in self.requests]
        self.assertEqual(batch_digest(leaves), h(block["batch_digest"]))
        self.assertEqual(block_hash(1, h(block["prev_hash"]), h(block["batch_digest"])), h(block["hash"]))
        cert = block["certificate"]
        self.assertEqual(commit_bytes(cert["view"], cert["seq"], h(block["batch_digest"])), h(cert["commit_bytes"]))

    def test_certificates(self):
        digest = h(self.v["block"]["batch_digest"])
        votes = [(x["signer"], h(x["signature"])) for x in self.v["block"]["certificate"]["votes"]]
        verify_certificate(self.committee, 0, 1, digest, votes, 1, digest)
        bad = {
            r"3 \(2f\+1\) needed": votes[:2],
            "repeated signer": [votes[0], votes[0], votes[1]],
            "does not verify": votes[:2] + [(votes[2][0], bytes(64))],
        }
        for expected, forged in bad.items():
            with self.assertRaisesRegex(VerificationError, expected):
                verify_certificate(self.committee, 0, 1, digest, forged, 1, digest)
        with self.assertRaisesRegex(VerificationError, "not 2"):
            verify_certificate(self.committee, 0, 1, digest, votes, 2, digest)

    def receipt(self, **changes):
        r = self.v["receipt"]
        fields = dict(
            request_id=self.requests[r["for_request"]].request_id,
            height=1,
            prev_hash=h(self.v["block"]["prev_hash"]),
            batch_digest=h(self.v["block"]["batch_digest"]),
            proof=bftd_pb2.MerkleProof(index=r["index"], count=r["count"], siblings=[h(s) for s in r["siblings"]]),
            certificate=self.certificate(),
        )
        fields.update(changes)
        return bftd_pb2.Receipt(**fields)

    def test_receipt(self):
        request = self.requests[self.v["receipt"]["for_request"]]
        receipt = verify_receipt(self.committee, request, self.receipt())
        self.assertEqual((receipt.height, receipt.signers), (1, (0, 1, 3)))
        r = self.v["receipt"]
        self.assertEqual(
            root_from_proof(merkle_leaf(request.signed_bytes()), r["index"], r["count"], [h(s) for s in r["siblings"]]),
            h(self.v["block"]["batch_digest"]),
        )
        # What a lying node might send instead:
        with self.assertRaisesRegex(VerificationError, "Merkle proof"):
            verify_receipt(self.committee, self.requests[0], self.receipt(request_id=self.requests[0].request_id))
        with self.assertRaisesRegex(VerificationError, "for height 1, not 2"):
            verify_receipt(self.committee, request, self.receipt(height=2))
        with self.assertRaisesRegex(VerificationError, "not 8"):
            verify_receipt(self.committee, request, self.receipt(request_id=9))
        with self.assertRaisesRegex(VerificationError, "2f\\+1"):
            votes = self.v["block"]["certificate"]["votes"][:2]
            verify_receipt(self.committee, request, self.receipt(certificate=self.certificate(votes)))

    def block(self, **changes):
        fields = dict(
            height=1,
            prev_hash=h(self.v["block"]["prev_hash"]),
            batch_digest=h(self.v["block"]["batch_digest"]),
            requests=[r.signed_bytes() for r in self.requests],
            duplicates=[],
            certificate=self.certificate(),
        )
        fields.update(changes)
        return bftd_pb2.Block(**fields)

    def test_block(self):
        block = BlockVerifier(self.committee, 1).check(self.block())
        self.assertEqual(block.hash, h(self.v["block"]["hash"]))
        self.assertEqual([r.payload for r in block.executed], [r.payload for r in self.requests])
        for expected, forged in {
            "duplicate list": self.block(duplicates=[1]),
            "batch digest": self.block(requests=[r.signed_bytes() for r in self.requests[:2]]),
            "hash chain": self.block(prev_hash=bytes([1] * 32)),
            "expected 1": self.block(height=2),
        }.items():
            with self.assertRaisesRegex(VerificationError, expected):
                BlockVerifier(self.committee, 1).check(forged)


if __name__ == "__main__":
    unittest.main()
