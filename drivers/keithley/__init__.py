"""Keithley source-measure units."""
