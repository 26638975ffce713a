"""Encoded series to gzip request bodies that stay under the intake's limits.

The v2 series intake takes at most 512,000 compressed and 5,242,880 decompressed bytes per request. Each
series is encoded once; bodies are filled up to the decompressed limit (or less, once the compression
ratio of the previous body shows the compressed limit would be hit) and split in half while the
compressed body is still too large.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

MAX_COMPRESSED = 512_000
MAX_DECOMPRESSED = 5_242_880
_PREFIX = b'{"series":['
_SUFFIX = b"]}"
_ENVELOPE = len(_PREFIX) + len(_SUFFIX)
_LEVEL = 6  # zlib's default: about 10x on series JSON; level 1 costs ~30 % more bytes for little time


def raw_body(items: Sequence[bytes]) -> bytes:
    """The decompressed request body for encoded series."""
    return _PREFIX + b",".join(items) + _SUFFIX


def gzip_body(raw: bytes) -> bytes:
    """``raw`` as a gzip member (``Content-Encoding: gzip``)."""
    compressor = zlib.compressobj(_LEVEL, zlib.DEFLATED, 31)
    return compressor.compress(raw) + compressor.flush()


@dataclass(frozen=True)
class Batch:
    """Encoded series and the gzip body that carries them."""

    items: tuple[bytes, ...]
    body: bytes
    raw_size: int

    @classmethod
    def of(cls, items: Sequence[bytes]) -> Batch:
        raw = raw_body(items)
        return cls(tuple(items), gzip_body(raw), len(raw))

    def halves(self) -> tuple[Batch, Batch]:
        """Two batches of half the series each (for a 413 or an over-large body); needs two series or more."""
        middle = len(self.items) // 2
        return Batch.of(self.items[:middle]), Batch.of(self.items[middle:])


class Batcher:
    """Packs encoded series into bodies under both limits; one instance per exporter keeps the ratio seen.

    Example:
        >>> batches = list(Batcher().batches([b'{"metric":"jobs","type":3,"points":[]}']))
        >>> len(batches), batches[0].raw_size
        (1, 51)
    """

    def __init__(self, max_compressed: int = MAX_COMPRESSED, max_decompressed: int = MAX_DECOMPRESSED) -> None:
        self.max_compressed = max_compressed
        self.max_decompressed = max_decompressed
        self._ratio = 0.0  # compressed / decompressed of the last body; 0 until one was compressed

    def batches(self, items: Sequence[bytes]) -> Iterator[Batch]:
        """Yield bodies within both limits; a single series over a limit is yielded alone (the caller drops it)."""
        target = self._target()
        chunk: list[bytes] = []
        size = _ENVELOPE
        for item in items:
            added = len(item) + (1 if chunk else 0)
            if chunk and size + added > target:
                yield from self._fit(Batch.of(chunk))
                chunk, size, target = [], _ENVELOPE, self._target()
                added = len(item)
            chunk.append(item)
            size += added
        if chunk:
            yield from self._fit(Batch.of(chunk))

    def fits(self, batch: Batch) -> bool:
        """True when ``batch`` is within both limits."""
        return len(batch.body) <= self.max_compressed and batch.raw_size <= self.max_decompressed

    def _target(self) -> int:
        if self._ratio <= 0:
            return self.max_decompressed
        # Aim 10 % under the compressed limit, so a body rarely needs compressing twice.
        return max(1, min(self.max_decompressed, int(self.max_compressed * 0.9 / self._ratio)))

    def _fit(self, batch: Batch) -> Iterator[Batch]:
        if batch.raw_size:
            self._ratio = len(batch.body) / batch.raw_size
        if self.fits(batch) or len(batch.items) < 2:
            yield batch
            return
        for half in batch.halves():
            yield from self._fit(half)
