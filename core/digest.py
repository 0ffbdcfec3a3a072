"""sha256 of files, and one digest over a set of named files: how weights, adapters, data and wheels are named
by content (train manifests, evaluation identities, the policy a record names, fetched wheels)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def sha256_file(path: Path | str) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def combined_sha256(named_digests: Iterable[tuple[str, str]]) -> str:
    """One digest over (name, sha256) pairs, in the order given: a directory's files as one identity."""
    digest = hashlib.sha256()
    for name, file_digest in named_digests:
        digest.update(f"{name}\0{file_digest}\n".encode())
    return digest.hexdigest()
