"""Keep BatchNorm running statistics (and num_batches_tracked) out of SAM's second pass."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Within the block, BN layers in train mode normalise with batch stats but record nothing."""
    # track_running_stats=False (rather than momentum=0) also stops num_batches_tracked and
    # works for momentum=None (cumulative average), which the momentum-0 trick gets wrong.
    mods = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    for m in mods:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in mods:
            m.track_running_stats = True
