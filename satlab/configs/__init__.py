"""Shipped configs and rig files."""
