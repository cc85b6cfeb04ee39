"""Drivers for real instruments (installed as satlab.drivers)."""
