"""SAM-family optimizers (sharpness-aware minimisation) for digital weights and physical controls."""

from satlab.optim.amp import finish_scaled_step, skip_overflowed_step, unscale_first_pass_
from satlab.optim.asam import ASAM, asam_param_groups
from satlab.optim.bn import frozen_bn_stats
from satlab.optim.distributed import sam_ddp_step
from satlab.optim.gsam import GSAM
from satlab.optim.msharp import m_sharpness_step
from satlab.optim.sam import SAM
from satlab.optim.samsgd import SAMSGD
from satlab.optim.sharpness import hutchinson_trace, max_loss_in_ball, top_hessian_eigenvalue
from satlab.optim.train_step import sam_train_step
from satlab.optim.wsam import WSAM

__all__ = [
    "ASAM", "GSAM", "SAM", "SAMSGD", "WSAM", "asam_param_groups", "finish_scaled_step",
    "frozen_bn_stats", "hutchinson_trace", "m_sharpness_step", "max_loss_in_ball", "sam_ddp_step",
    "sam_train_step", "skip_overflowed_step", "top_hessian_eigenvalue", "unscale_first_pass_",
]
