"""A folder or CSV source's channel count, read from NIfTI headers without decoding any volume."""

from __future__ import annotations

from collections import Counter

from rayssl.data.io import BadInput, nifti_shape
from rayssl.data.sources.base import Case

CHANNEL_SAMPLE = 64
"""Headers read to find a folder or CSV source's channel count (the most common one)."""


def volume_channels(path: str) -> int | None:
    """Channels of a NIfTI file from its header (its 4th dimension, 1 for 3D); ``None`` if unreadable (the
    file is quarantined later, when decoded)."""
    try:
        shape = nifti_shape(path)
    except BadInput:
        return None
    shape = shape[:4] + tuple(d for d in shape[4:] if d != 1)  # trailing singleton dims
    return int(shape[3]) if len(shape) >= 4 else 1


def majority_channels(cases: list[Case]) -> int:
    """The most common channel count among (up to :data:`CHANNEL_SAMPLE`, evenly spread) cases' first files."""
    step = max(1, len(cases) // CHANNEL_SAMPLE)
    counts = Counter(c for c in (volume_channels(case.image[0]) for case in cases[::step]) if c is not None)
    return counts.most_common(1)[0][0] if counts else 1
