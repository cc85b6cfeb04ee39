"""SAM-family optimizers (sharpness-aware minimisation) for digital weights and physical controls."""

from satlab.optim.sam import SAM

__all__ = ["SAM"]
