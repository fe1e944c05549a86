"""Self-supervised pieces: Models Genesis corruptions and sin-cos position embeddings."""

from rayssl.ssl.genesis import GenesisCorruption
from rayssl.ssl.pos_embed import sincos_pos_embed

__all__ = ["GenesisCorruption", "sincos_pos_embed"]
