"""Microring weight banks: the bench physics, its simulated instruments and the Q8iv bench."""
