"""Emulators that speak an instrument's own wire protocol on a real serial port."""
