"""Programmable MZI meshes (the SAT paper's System 2): physics, programming, the bench."""
