"""Saturable-absorber activations and the all-optical network built on them."""
