"""Physics of a programmable MZI mesh: heater currents -> phases -> a unitary -> |E|^2.

The one place where mesh physics lives: the simulated instruments and the digital twin
(``bench.py``) both evaluate :class:`MziMesh`, the bench with its error draws, the twin
without.

An MZI on modes (m, m+1) is coupler, internal phase theta on the upper arm, coupler,
with the external phase phi on the upper input (Clements et al., Optica 3, 1460):
``M = B(e2) diag(e^{i theta}, 1) B(e1) diag(e^{i phi}, 1)``. A coupler with splitting
error e has amplitude factors sqrt((1 +- e)/2) (shared/REFERENCES.md, System 2), so e = 0
is 50:50 and every coupler stays lossless. After the last column, one phase shifter per
mode (psi). Every phase is set by a heater: phase = efficiency * R * I^2 plus a share of
the neighbouring heaters' power (thermal crosstalk), plus the device's phase error.

Controls (heater currents) are ordered [theta of every MZI, phi of every MZI, psi of
every mode]; MZIs in the order light meets them (:attr:`MeshLayout.pairs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch


@dataclass(frozen=True)
class MeshLayout:
    """Where the MZIs of a mesh sit: the top mode of each, and the columns they form."""

    name: str
    modes: int
    pairs: np.ndarray  # top mode of each MZI, in the order light meets them
    columns: tuple[np.ndarray, ...]  # MZI indices of each column; a column's pairs are disjoint

    @property
    def size(self) -> int:
        """Number of MZIs."""
        return len(self.pairs)

    @property
    def heaters(self) -> int:
        """Number of heaters: theta and phi of every MZI, and one output phase per mode."""
        return 2 * self.size + self.modes

    @cached_property
    def column_indices(self) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """Each column's (MZI indices, top modes) as tensors, built once per layout."""
        return tuple((torch.from_numpy(col), torch.from_numpy(self.pairs[col])) for col in self.columns)


def _scheduled(name: str, modes: int, pairs: list[int]) -> MeshLayout:
    # Each MZI in the first column after the last MZI on either of its modes.
    last = np.full(modes, -1)
    column = np.empty(len(pairs), dtype=int)
    for k, m in enumerate(pairs):
        column[k] = last[m] = last[m + 1] = max(last[m], last[m + 1]) + 1
    cols = tuple(np.flatnonzero(column == c) for c in range(column.max() + 1)) if pairs else ()
    return MeshLayout(name, modes, np.asarray(pairs, dtype=int), cols)


def rectangular(modes: int) -> MeshLayout:
    """Clements' rectangular mesh: ``modes`` columns, N(N-1)/2 MZIs, every path equally long."""
    _check_modes(modes)
    return _scheduled("rectangular", modes,
                      [m for col in range(modes) for m in range(col % 2, modes - 1, 2)])


def triangular(modes: int) -> MeshLayout:
    """Reck's triangular mesh: 2N-3 columns, N(N-1)/2 MZIs."""
    _check_modes(modes)
    return _scheduled("triangular", modes, [j for row in range(modes - 1, 0, -1) for j in range(row)])


LAYOUTS = {"rectangular": rectangular, "triangular": triangular}


def _check_modes(modes: int) -> None:
    if not isinstance(modes, int) or isinstance(modes, bool) or modes < 2:
        raise ValueError(f"a mesh needs at least 2 modes, got {modes!r}")


def mzi_elements(theta: torch.Tensor, phi: torch.Tensor, e1: torch.Tensor | float = 0.0,
                 e2: torch.Tensor | float = 0.0) -> tuple[torch.Tensor, ...]:
    """(m00, m01, m10, m11) of each MZI's 2x2 transfer, broadcast over the inputs."""
    t1, r1 = _coupler(e1, theta)
    t2, r2 = _coupler(e2, theta)
    inner = torch.exp(1j * theta)  # internal phase on the upper arm
    outer = torch.exp(1j * phi)  # external phase on the upper input
    m00 = (t2 * t1 * inner - r2 * r1) * outer
    m01 = 1j * (t2 * r1 * inner + r2 * t1)
    m10 = 1j * (r2 * t1 * inner + t2 * r1) * outer
    m11 = t2 * t1 - r2 * r1 * inner
    return m00, m01, m10, m11


def _coupler(error: torch.Tensor | float, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    e = torch.as_tensor(error, dtype=like.dtype, device=like.device)
    return torch.sqrt((1 + e) / 2), torch.sqrt((1 - e) / 2)


def propagate(field: torch.Tensor, layout: MeshLayout, theta: torch.Tensor, phi: torch.Tensor,
              psi: torch.Tensor, e1: torch.Tensor | float = 0.0, e2: torch.Tensor | float = 0.0,
              mzi_amplitude: float = 1.0) -> torch.Tensor:
    """Output fields of the mesh for input fields (..., B, modes), one column at a time.

    theta, phi (..., n_mzi), psi (..., modes); a leading dimension P of the phases
    gives P meshes at once (then fields (P, B, modes) or (B, modes)). e1, e2: the
    couplers' splitting errors (n_mzi,) or 0; ``mzi_amplitude``: sqrt of an MZI's
    power transmission (insertion loss).
    """
    m00, m01, m10, m11 = (m.unsqueeze(-2) for m in mzi_elements(theta, phi, e1, e2))
    if mzi_amplitude != 1.0:
        m00, m01, m10, m11 = (m * mzi_amplitude for m in (m00, m01, m10, m11))
    lead = torch.broadcast_shapes(field.shape[:-2], theta.shape[:-1])
    field = field.expand(*lead, *field.shape[-2:])
    for k, top in layout.column_indices:
        k, top = k.to(field.device), top.to(field.device)
        a, b = field[..., top], field[..., top + 1]
        new_a = m00[..., k] * a + m01[..., k] * b
        new_b = m10[..., k] * a + m11[..., k] * b
        field = field.index_copy(-1, top, new_a).index_copy(-1, top + 1, new_b)
    return field * torch.exp(1j * psi).unsqueeze(-2)


def mesh_unitary(layout: MeshLayout, theta: torch.Tensor, phi: torch.Tensor, psi: torch.Tensor,
                 e1: torch.Tensor | float = 0.0, e2: torch.Tensor | float = 0.0,
                 mzi_amplitude: float = 1.0) -> torch.Tensor:
    """The mesh's transfer matrix U (modes, modes): output = U @ input."""
    eye = torch.eye(layout.modes, dtype=torch.complex128 if theta.dtype == torch.float64
                    else torch.complex64, device=theta.device)
    return propagate(eye, layout, theta, phi, psi, e1, e2, mzi_amplitude).transpose(-1, -2)


@dataclass(frozen=True)
class HeaterParams:
    """Thermo-optic phase shifters: phase = efficiency * R * I^2, shared with neighbours."""

    resistance_ohm: float = 500.0
    efficiency_rad_per_W: float = 2 * math.pi / 0.025  # 2 pi at 25 mW, a typical TiN heater
    crosstalk: float = 0.0  # share of a heater's phase that reaches each neighbour
    max_current_A: float = 0.01  # 50 mW: 4 pi of range, so any phase needs at most 2 pi


def heater_neighbours(layout: MeshLayout) -> tuple[np.ndarray, np.ndarray]:
    """(source, target) heater indices of thermal neighbours: heaters of the same kind in
    adjacent MZIs of one column, and adjacent output phase shifters (both directions)."""
    src, dst = [], []
    for col in layout.columns:
        ordered = col[np.argsort(layout.pairs[col])]
        for lo, hi in zip(ordered[:-1], ordered[1:], strict=True):
            if layout.pairs[hi] - layout.pairs[lo] != 2:
                continue  # not side by side on the chip
            for offset in (0, layout.size):  # theta heaters, then phi heaters
                src += [lo + offset, hi + offset]
                dst += [hi + offset, lo + offset]
    out = 2 * layout.size + np.arange(layout.modes)
    src += list(out[:-1]) + list(out[1:])
    dst += list(out[1:]) + list(out[:-1])
    return np.asarray(src, dtype=int), np.asarray(dst, dtype=int)


class MziMesh:
    """A mesh as built: layout, heaters, coupler and phase errors, insertion loss.

    ``errors`` holds the device's deviations: ``e1``, ``e2`` (n_mzi,) splitting errors of
    the two couplers of each MZI, ``phase`` (heaters,) additive phase errors; an ideal
    mesh has none.
    """

    def __init__(self, layout: MeshLayout, heaters: HeaterParams = HeaterParams(),
                 errors: dict[str, torch.Tensor] | None = None, loss_db_per_mzi: float = 0.0,
                 crosstalk_scale: float = 1.0) -> None:
        self.layout, self.heaters, self.loss_db = layout, heaters, loss_db_per_mzi
        self.errors = errors or {}
        self.crosstalk_scale = crosstalk_scale
        src, dst = heater_neighbours(layout)
        self._src, self._dst = torch.from_numpy(src), torch.from_numpy(dst)

    @property
    def mzi_amplitude(self) -> float:
        """Field transmission of one MZI."""
        return 10 ** (-self.loss_db / 20)

    def phases(self, currents: torch.Tensor) -> torch.Tensor:
        """Every heater's phase (rad) for currents (..., heaters) in amps."""
        h = self.heaters
        own = h.efficiency_rad_per_W * h.resistance_ohm * currents * currents
        kappa = h.crosstalk * self.crosstalk_scale
        if kappa:
            own = own.index_add(-1, self._dst, own[..., self._src], alpha=kappa)
        if "phase" in self.errors:
            own = own + self.errors["phase"].to(own.dtype)
        return own

    def split(self, phases: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(theta, phi, psi) of a heater-ordered phase vector."""
        n = self.layout.size
        return phases[..., :n], phases[..., n:2 * n], phases[..., 2 * n:]

    def output(self, field: torch.Tensor, currents: torch.Tensor) -> torch.Tensor:
        """Output fields for input fields (B, modes) and currents (..., heaters)."""
        theta, phi, psi = self.split(self.phases(currents))
        return propagate(field, self.layout, theta, phi, psi, self.errors.get("e1", 0.0),
                         self.errors.get("e2", 0.0), self.mzi_amplitude)

    def unitary(self, currents: torch.Tensor) -> torch.Tensor:
        """The transfer matrix at these currents."""
        eye = torch.eye(self.layout.modes, dtype=torch.complex128, device=currents.device)
        return self.output(eye, currents).transpose(-1, -2)

    def currents_for_phases(self, phases: torch.Tensor) -> torch.Tensor:
        """Currents that set these phases (mod 2 pi) on the error-free heaters, crosstalk
        compensated: each target is raised by 2 pi until no heater needs negative power."""
        h = self.heaters
        n = self.layout.heaters
        mix = torch.eye(n, dtype=torch.float64)
        kappa = h.crosstalk * self.crosstalk_scale
        mix[self._dst, self._src] += kappa
        lu, pivots = torch.linalg.lu_factor(mix)  # once: each 2 pi raise solves again
        target = torch.remainder(phases.double(), 2 * math.pi)
        for _ in range(8):
            power = torch.linalg.lu_solve(lu, pivots, target.unsqueeze(-1)).squeeze(-1) / h.efficiency_rad_per_W
            short = power < 0
            if not short.any():
                break
            target = torch.where(short, target + 2 * math.pi, target)
        currents = torch.sqrt(power.clamp(min=0) / h.resistance_ohm)
        if float(currents.max()) > h.max_current_A:
            raise ValueError(f"the phases need {float(currents.max()):.4g} A, above the heaters' "
                             f"{h.max_current_A:g} A")
        return currents
