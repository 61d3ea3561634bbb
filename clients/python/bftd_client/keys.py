"""Key files compatible with `bftd keygen` (docs/client-protocol.md
section 2): one line `bftd-secret-key:` and the 64 hex digits of the
Ed25519 seed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .protocol import REQUEST_TAG, tagged_digest

PREFIX = "bftd-secret-key:"


class SigningKey:
    """An Ed25519 key that signs requests as the client protocol says."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        self._seed = seed
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.public_key: bytes = self._key.public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw
        )

    @classmethod
    def generate(cls) -> "SigningKey":
        """A fresh key from the operating system's randomness."""
        return cls(os.urandom(32))

    @classmethod
    def from_text(cls, text: str) -> "SigningKey":
        """Parses a key file's text (`bftd-secret-key:` + 64 hex digits)."""
        line = text.strip()
        if not line.startswith(PREFIX):
            raise ValueError(f"not a bftd secret key: it must start with {PREFIX!r}")
        try:
            seed = bytes.fromhex(line[len(PREFIX):])
        except ValueError as error:
            raise ValueError("a bftd secret key is 64 hex digits after the prefix") from error
        return cls(seed)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "SigningKey":
        """Reads a key file written by `bftd keygen` or :meth:`save`."""
        return cls.from_text(Path(path).read_text())

    def to_text(self) -> str:
        return f"{PREFIX}{self._seed.hex()}\n"

    def save(self, path: Union[str, Path]) -> None:
        """Writes the key file, readable by its owner only."""
        fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(self.to_text())

    def sign_digest_of(self, tag: str, message: bytes) -> bytes:
        """Ed25519 over digest(tag, message)."""
        return self._key.sign(tagged_digest(tag, message))

    def sign_request(self, request_bytes: bytes) -> bytes:
        return self.sign_digest_of(REQUEST_TAG, request_bytes)

    def __repr__(self) -> str:
        return f"SigningKey(public_key={self.public_key.hex()})"
