"""Data sources: turn a ``data.source`` SPEC into a list of cases with splits, without decoding volumes.

SPEC forms: ``synthetic:ct|mri|cxr[:N[:SEED]]``, ``msd:PATH``, ``folder:IMAGES[,LABELS]``, ``csv:FILE.csv``,
``cxr14:PATH``, ``dicom:FOLDER``, or a bare PATH (auto-detected). Paths may be local or ``s3://`` / ``gs://`` /
``file://``. Pre-training also reads a pool of sources (a list of SPECs or a pool file): :mod:`.pool_file` reads
its entries, :mod:`.pool` resolves them into one source (:func:`resolve_pool`).

One format per module (:mod:`.msd`, :mod:`.folder`, :mod:`.csv_list`, :mod:`.cxr14`, :mod:`.dicom`,
:mod:`.synthetic`); :mod:`.base` holds :class:`Case` and :class:`Source`, :mod:`.safety` keeps listed files
inside the dataset's folders, :mod:`.splits` assigns splits, :mod:`.channels` reads the channel count, and
:mod:`.resolve` ties them together in :func:`resolve_source`.
"""

from rayssl.data.sources.base import SPEC_FORMS, Case, PoolEntry, QuarantineError, Source, listing_message
from rayssl.data.sources.channels import CHANNEL_SAMPLE
from rayssl.data.sources.cxr14 import CXR14_CLASSES
from rayssl.data.sources.pool import POOL, resolve_pool
from rayssl.data.sources.resolve import resolve_source
from rayssl.data.sources.safety import outside_root
from rayssl.data.sources.splits import COPY_SAMPLE, assign_splits
from rayssl.data.sources.synthetic import SYNTHETIC_DEFAULT_N

__all__ = [
    "CHANNEL_SAMPLE", "COPY_SAMPLE", "CXR14_CLASSES", "POOL", "SPEC_FORMS", "SYNTHETIC_DEFAULT_N", "Case", "PoolEntry",
    "QuarantineError", "Source", "assign_splits", "listing_message", "outside_root", "resolve_pool", "resolve_source",
]
