"""The Models Genesis corruption probabilities, defined once.

:class:`rayssl.pretrain.genesis_corruptions.GenesisCorruption` adds the corruptions' other knobs to them and
:class:`rayssl.config.CorruptionConfig` types them for the configs. Pure Python: the corruptions also run
where pydantic is not installed (``benchmarks/gpu_step.py`` on a bare GPU machine).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass
class CorruptionProbs:
    """Models Genesis corruption probabilities (paper defaults), drawn on the training worker."""

    flip_prob: float = field(default=0.4, metadata={"doc": "Probability of each of up to three flips."})
    shuffle_prob: float = field(default=0.5, metadata={"doc": "Probability of local pixel shuffling."})
    nonlinear_prob: float = field(default=0.9, metadata={
        "doc": "Probability of the non-linear (Bezier) intensity transform."})
    paint_prob: float = field(default=0.9, metadata={"doc": "Probability of in- or out-painting."})
    inpaint_rate: float = field(default=0.2, metadata={
        "doc": "Share of the painting that is in-painting (the rest is out-painting)."})

    def __post_init__(self):
        for f in fields(CorruptionProbs):
            if not 0.0 <= getattr(self, f.name) <= 1.0:
                raise ValueError(f"{f.name}={getattr(self, f.name)} must be a probability in [0, 1]")
