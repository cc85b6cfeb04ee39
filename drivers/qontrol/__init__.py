"""Qontrol multichannel heater drivers."""
