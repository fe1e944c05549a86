"""``synthetic:ct|mri|cxr[:N[:SEED]]``: a generated dataset (:mod:`rayssl.data.synthetic`), listed as MSD or
ChestX-ray14."""

from __future__ import annotations

from rayssl.config import DataConfig
from rayssl.data.sources.base import Source, bad_spec
from rayssl.data.sources.cxr14 import list_cxr14
from rayssl.data.sources.msd import list_msd
from rayssl.data.synthetic import ensure_synthetic

SYNTHETIC_DEFAULT_N = {"ct": 8, "mri": 6, "cxr": 64}


def list_synthetic(rest: str, data: DataConfig, spec: str) -> Source:
    """``rest``: ``KIND[:N[:SEED]]``, the SPEC after ``synthetic:``."""
    kind, _, rest = rest.partition(":")
    n, _, seed = rest.partition(":")
    if kind not in SYNTHETIC_DEFAULT_N:
        raise bad_spec(spec, f"unknown synthetic kind {kind!r}")
    try:
        count = int(n) if n else SYNTHETIC_DEFAULT_N[kind]
    except ValueError:
        raise bad_spec(spec, f"N must be an integer, got {n!r}") from None
    try:  # the generator's seed; default data.seed (a pool generated with another seed shares no phantom)
        gen_seed = int(seed) if seed else data.seed
    except ValueError:
        raise bad_spec(spec, f"SEED must be an integer, got {seed!r}") from None
    if count < (2 if kind == "cxr" else 1):
        raise bad_spec(spec, f"N must be >= {2 if kind == 'cxr' else 1}, got {count}")
    root = str(ensure_synthetic(kind, count, gen_seed, data.synthetic_dir))
    return list_cxr14(root) if kind == "cxr" else list_msd(root)
