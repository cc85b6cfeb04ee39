"""SAM-family optimizers (sharpness-aware minimisation) for digital weights and physical controls."""
