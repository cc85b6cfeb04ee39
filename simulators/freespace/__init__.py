"""Free-space optics: propagation, the D2NN and the incoherent benches, displays and stages."""
