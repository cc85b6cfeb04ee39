"""satlab: sharpness-aware training of physical neural networks on the bench."""

__version__ = "0.1.0"
