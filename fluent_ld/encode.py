"""Batch bodies with exact sizes, from events already encoded as JSON.

A batch body is ``[`` + fragments joined by ``,`` + ``]``: its size is known before it is built,
so batches are cut to fit LaunchDarkly's 10 MB limit exactly, from any mix of stored rows. Pure.
"""

from __future__ import annotations

import gzip
from array import array
from collections.abc import Iterable, Sequence

__all__ = [
    "LD_BODY_LIMIT",
    "body",
    "body_size",
    "gzip_body",
    "join_lengths",
    "pack_lengths",
    "split_fragments",
    "unpack_lengths",
]

# LaunchDarkly's documented limit on the import request body ("must stay under 10 MB").
# Whether it is measured before or after gzip is not documented, so the uncompressed body is bounded.
LD_BODY_LIMIT = 10_000_000


def body_size(count: int, fragment_bytes: int) -> int:
    """The size of ``[f1,f2,...]`` for ``count`` fragments of ``fragment_bytes`` bytes in all."""
    return fragment_bytes + max(count - 1, 0) + 2


def body(fragments: Iterable[bytes]) -> bytes:
    return b"[" + b",".join(fragments) + b"]"


def gzip_body(data: bytes) -> bytes:
    # mtime=0: the same batch compresses to the same bytes on every attempt.
    return gzip.compress(data, compresslevel=6, mtime=0)


def pack_lengths(lengths: Sequence[int]) -> bytes:
    """Fragment lengths as a compact blob (uint32 each), stored beside the fragments."""
    if type(lengths) is array and lengths.typecode == "I":
        return lengths.tobytes()
    return array("I", lengths).tobytes()


def unpack_lengths(blob: bytes) -> array:
    out = array("I")
    out.frombytes(blob)
    return out


def join_lengths(*blobs: bytes) -> bytes:
    return b"".join(blobs)


def split_fragments(data: bytes, lengths: Sequence[int]) -> list[bytes]:
    """Concatenated fragments back into a list, by their lengths."""
    out, pos = [], 0
    view = memoryview(data)
    for n in lengths:
        out.append(bytes(view[pos : pos + n]))
        pos += n
    if pos != len(data):
        raise ValueError(f"fragment lengths add up to {pos} bytes, the data holds {len(data)}")
    return out
