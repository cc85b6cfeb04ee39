"""Thorlabs optical power meters."""
