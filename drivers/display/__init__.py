"""Instruments driven as a computer display (SLMs on a second monitor)."""
