"""rayssl: self pre-training of medical imaging models, scaled with Ray."""

__version__ = "0.1.0"
