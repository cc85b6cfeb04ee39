"""Calibration: measure a rig's devices through its interfaces, store the result, use it."""

from satlab.calibration.lorentz import LorentzFit, fit_lorentzian, lorentz_dip, sweep_ring
from satlab.calibration.store import (
                                      Calibration,
                                      StepResult,
                                      check_calibration,
                                      load_calibration,
                                      write_calibration,
)

__all__ = ["Calibration", "LorentzFit", "StepResult", "check_calibration", "fit_lorentzian",
           "load_calibration", "lorentz_dip", "sweep_ring", "write_calibration"]
