"""Exponential histogram points as the classic (explicit-bucket) histograms their buckets convert to, exactly.

One conversion for everything that reads classic buckets only: the Prometheus text endpoint, the database
exporter's rows and alert rules' quantiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ClassicBuckets:
    """An exponential histogram point as explicit buckets (what :func:`_histogram_lines` reads)."""

    attributes: Any
    start_time_unix_nano: int
    count: int
    sum: float
    explicit_bounds: list[float]
    bucket_counts: list[int]
    exemplars: Any


def explicit_buckets(point: Any) -> ClassicBuckets:
    """An exponential histogram point as the classic histogram Prometheus text can carry, without loss.

    Each exponential bucket ``(base**i, base**(i+1)]`` (``base = 2**(2**-scale)``) becomes the bucket
    ``le=base**(i+1)``; negative buckets mirror them below zero and the zero bucket is ``le=0``.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> point = NS(attributes={}, start_time_unix_nano=0, count=4, sum=9.0, exemplars=(), scale=0, zero_count=1,
        ...            positive=NS(offset=1, bucket_counts=[2, 1]), negative=NS(offset=0, bucket_counts=[]))
        >>> converted = explicit_buckets(point)
        >>> converted.explicit_bounds, converted.bucket_counts
        ([0.0, 4.0, 8.0], [1, 2, 1, 0])
    """
    step = 2.0**-point.scale  # log2 of the base
    bounds: list[float] = []
    counts: list[int] = []
    negative = point.negative
    below_zero = range(negative.offset + len(negative.bucket_counts) - 1, negative.offset - 1, -1)
    for index in below_zero if any(negative.bucket_counts) else ():
        bounds.append(-(2.0 ** (index * step)))  # the bucket [-base**(i+1), -base**i)
        counts.append(negative.bucket_counts[index - negative.offset])
    bounds.append(0.0)
    counts.append(point.zero_count)
    positive = point.positive
    for position, count in enumerate(positive.bucket_counts):
        bounds.append(2.0 ** ((positive.offset + position + 1) * step))
        counts.append(count)
    counts.append(0)  # +Inf: every observation is in a finite bucket
    exemplars = getattr(point, "exemplars", ())
    return ClassicBuckets(
        point.attributes, point.start_time_unix_nano, point.count, point.sum, bounds, counts, exemplars
    )
