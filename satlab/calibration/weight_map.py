"""The weight ↔ current map of a calibrated ring bank, and the twin it makes.

From the fits (each ring's dip centre, half-width, depth and baseline in drive units)
and the crosstalk matrix C, a ring's weight at heater currents I is
``w = baseline - depth / (1 + ((D - center) / hwhm)^2)`` with ``D = (1 + C) d(I)``
its effective drive. Weights are reached on the rising branch above each resonance
(as ``satlab.systems.mrr`` does): the wanted effective drives follow in closed form,
and the heater drives that give them, crosstalk compensated, from a bounded least
squares within the currents' limits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import lsq_linear

from satlab.calibration.lorentz import lorentz_dip
from satlab.calibration.ring_fit import USABLE
from satlab.calibration.store import Calibration

FIELDS = ("center", "hwhm", "depth", "baseline", "max_current", "status")


@dataclass
class BankMap:
    """One calibrated bank: ring dips, crosstalk and limits, in drive units."""

    rows: int
    cols: int
    tuning: str  # power or current
    resistance: float
    center: np.ndarray
    hwhm: np.ndarray
    depth: np.ndarray
    baseline: np.ndarray
    max_current: np.ndarray
    status: np.ndarray
    coupling: np.ndarray  # (rings, rings), zero diagonal

    @classmethod
    def from_calibration(cls, cal: Calibration, layer: str) -> BankMap:
        """Layer ``layer``'s map from a calibration folder's weight_map step."""
        summary = cal.summary("weight_map").get(layer)
        if not isinstance(summary, dict) or not {"rows", "cols", "tuning", "resistance_ohm"} <= set(summary):
            raise_missing(cal, layer)
        rows, cols = int(summary["rows"]), int(summary["cols"])
        n = rows * cols
        # rings that were not fitted hold nan: only the usable ones must be numbers
        arrays = {f: cal.array("weight_map", f"{layer}.{f}", (n,), finite=False) for f in FIELDS}
        arrays["coupling"] = cal.array("weight_map", f"{layer}.coupling", (n, n))
        bank = cls(rows, cols, str(summary["tuning"]), float(summary["resistance_ohm"]), **arrays)
        for f in ("center", "hwhm", "depth", "baseline"):
            if not np.isfinite(getattr(bank, f)[bank.usable]).all():
                from satlab.validation import ConfigError

                raise ConfigError(cal.path / "weight_map.npz", f"{layer}.{f}",
                                  "expected finite numbers for every fitted ring")
        return bank

    def arrays(self, layer: str) -> dict[str, np.ndarray]:
        """The map's arrays, keyed for the calibration folder."""
        return {f"{layer}.{f}": getattr(self, f) for f in (*FIELDS, "coupling")}

    @property
    def usable(self) -> np.ndarray:
        """Rings whose dip was fitted (in range, or on its tail)."""
        return np.isin(self.status, USABLE)

    def drive(self, currents: np.ndarray) -> np.ndarray:
        """Heater drives of currents (A)."""
        return currents if self.tuning == "current" else np.square(currents) * self.resistance

    def weights(self, currents: np.ndarray) -> np.ndarray:
        """Weights (rows, cols) at ring currents (rings,), row-major."""
        with torch.no_grad():
            return self.torch_weights(torch.as_tensor(currents, dtype=torch.float64)).numpy()

    def torch_weights(self, currents: torch.Tensor) -> torch.Tensor:
        """Weights (..., rows, cols) at currents (..., rings); differentiable."""
        t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
        drive = currents if self.tuning == "current" else currents.square() * self.resistance
        effective = drive + drive @ t(self.coupling).T
        w = lorentz_dip(effective, t(self._center), t(self._hwhm), t(self._depth), t(self._baseline))
        return w.reshape(*w.shape[:-1], self.rows, self.cols)

    # unusable rings are read as flat at the bank's baseline (no dip, no slope)
    @property
    def _center(self) -> np.ndarray:
        return np.where(self.usable, self.center, 0.0)

    @property
    def _hwhm(self) -> np.ndarray:
        return np.where(self.usable, self.hwhm, 1.0)

    @property
    def _depth(self) -> np.ndarray:
        return np.where(self.usable, self.depth, 0.0)

    @property
    def _baseline(self) -> np.ndarray:
        return np.where(self.usable, self.baseline, np.nanmedian(np.where(self.usable, self.baseline, np.nan)))

    def _branch_drive(self, w: np.ndarray) -> np.ndarray:
        """Effective drive on the rising branch giving weights ``w`` (inside the dip's range)."""
        lowest = self._baseline - self._depth
        w = np.clip(w, lowest + 1e-12, self._baseline - 1e-12)
        return self._center + self._hwhm * np.sqrt(self._depth / (self._baseline - w) - 1)

    def reachable(self) -> tuple[np.ndarray, np.ndarray]:
        """Lowest and highest weight each ring reaches on its rising branch (rings,)."""
        top = self.drive(self.max_current)
        shape = (self._center, self._hwhm, self._depth, self._baseline)
        return lorentz_dip(np.clip(self._center, 0, top), *shape), lorentz_dip(top, *shape)

    def currents_for(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Currents (rings,) giving weights (rows, cols), crosstalk compensated, within limits;
        and which rings' targets were out of reach (clipped to their range)."""
        target = np.asarray(weights, float).reshape(-1)
        low, high = self.reachable()
        clipped = (target < low - 1e-9) | (target > high + 1e-9) | ~self.usable
        effective = self._branch_drive(np.clip(target, low, high))
        effective = np.where(self.usable, np.maximum(effective, 0.0), 0.0)
        top = self.drive(self.max_current)
        mix = np.eye(len(target)) + self.coupling
        solved = lsq_linear(mix, effective, bounds=(np.zeros_like(top), top)).x
        drive = np.clip(solved, 0, top)
        currents = drive if self.tuning == "current" else np.sqrt(drive / self.resistance)
        return np.minimum(currents, self.max_current), clipped


def raise_missing(cal: Calibration, layer: str) -> None:
    """ConfigError: the calibration has no map of this layer."""
    from satlab.validation import ConfigError

    raise ConfigError(cal.path / "calibration.yaml", f"steps.weight_map.summary.{layer}",
                      f"no weight map of layer {layer!r}; run satlab calibrate on this rig")


class CalibratedBankTwin(torch.nn.Module):
    """A bank's twin from its calibration: ``y = W(I) x`` in input units."""

    def __init__(self, bank: BankMap) -> None:
        super().__init__()
        self.bank = bank

    def forward(self, inputs: torch.Tensor, currents: torch.Tensor, drift_K: float = 0.0) -> torch.Tensor:
        """Layer output for inputs (B, cols) and currents (rings,)."""
        w = self.bank.torch_weights(currents)
        return inputs.to(w.dtype) @ w.transpose(-1, -2)
