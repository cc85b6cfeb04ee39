"""Instruments that replay recorded data, for dry runs."""
