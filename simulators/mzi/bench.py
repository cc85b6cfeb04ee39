"""A simulated MZI-mesh bench, its digital twin, and the instruments that are views onto it:
a heater source (``heater_source.SimulatedHeaterSource``), an input modulator putting
field amplitudes on the modes, photodetectors on the first ports.

The bench is the mesh as built: coupler splitting errors e ~ N(0, sigma_bs^2) and phase
errors N(0, sigma_phase^2) on every theta and phi, drawn once from ``error_seed`` (the
SAT paper's System 2: fixed error draws are the device). The twin is the same mesh
without errors, so without errors and noise the two agree bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from satlab.simulators.mzi.mesh import LAYOUTS, HeaterParams, MziMesh
from satlab.simulators.seeded_noise import SeededNoise

from satlab.instruments import InputModulator, Photodetector
from satlab.validation import OptionError, require_count, require_number

_HEATER_FIELDS = tuple(HeaterParams.__dataclass_fields__)


def error_free_mesh(modes: int, outputs: int, layout: str = "rectangular", heaters: dict | None = None,
                    loss_db_per_mzi: float = 0.0, input_full_scale_W: float = 1e-3) -> MziMesh:
    """The mesh that the rig-file options shared by bench and twin describe (checked)."""
    require_count("modes", modes, 2, highest=256)
    require_count("outputs", outputs, 1, highest=modes)
    if layout not in LAYOUTS:
        raise OptionError("layout", f"expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    heaters = {} if heaters is None else heaters
    if not isinstance(heaters, dict) or set(heaters) - set(_HEATER_FIELDS):
        raise OptionError("heaters", f"expected a mapping of {', '.join(_HEATER_FIELDS)}, got {heaters!r}")
    for name, value in heaters.items():
        require_number(f"heaters.{name}", value, 0.0, 1.0 if name == "crosstalk" else math.inf)
        if name != "crosstalk" and value == 0:
            raise OptionError(f"heaters.{name}", "expected a positive number, got 0")
    require_number("loss_db_per_mzi", loss_db_per_mzi, 0.0, 10.0)
    require_number("input_full_scale_W", input_full_scale_W, 1e-12, 1.0)
    params = HeaterParams(**{k: float(v) for k, v in heaters.items()})
    top = params.efficiency_rad_per_W * params.resistance_ohm * params.max_current_A ** 2
    if top < 2 * math.pi * (1 + 2 * params.crosstalk):
        raise OptionError("heaters.max_current_A", f"{params.max_current_A:g} A reaches {top:.3g} rad; "
                          "a phase needs 2 pi of range, more with crosstalk")
    return MziMesh(LAYOUTS[layout](modes), params, loss_db_per_mzi=loss_db_per_mzi)


def port_power_W(mesh: MziMesh, amplitudes: torch.Tensor, currents: torch.Tensor, outputs: int,
                 full_scale_W: float) -> torch.Tensor:
    """Power (W) on the first ``outputs`` ports for input field amplitudes (B, modes) in
    units of full scale; bench and twin both compute it here, so they agree bit for bit."""
    field = amplitudes.to(torch.complex128) * math.sqrt(full_scale_W)
    return mesh.output(field, currents)[..., :outputs].abs() ** 2


class MziTwin(torch.nn.Module):
    """Digital twin of the mesh: the error-free mesh, ``|U x|^2`` on the first ports, in
    input units (an input value of 1 on one mode carries 1)."""

    def __init__(self, modes: int, outputs: int, layout: str = "rectangular",
                 heaters: dict | None = None, loss_db_per_mzi: float = 0.0,
                 input_full_scale_W: float = 1e-3) -> None:
        super().__init__()
        self.mesh = error_free_mesh(modes, outputs, layout, heaters, loss_db_per_mzi, input_full_scale_W)
        self.outputs, self.full_scale_W = outputs, input_full_scale_W

    check_options = staticmethod(error_free_mesh)

    def forward(self, inputs: torch.Tensor, currents: torch.Tensor) -> torch.Tensor:
        """Port powers (..., B, outputs) for field amplitudes (B, modes) and currents (..., heaters)."""
        return port_power_W(self.mesh, inputs, currents, self.outputs, self.full_scale_W) / self.full_scale_W


def _check_device(sigma_bs: object, sigma_phase: object, error_seed: object, detector_noise_W: object,
                  noise_seed: object) -> None:
    require_number("sigma_bs", sigma_bs, 0.0, 0.3)  # 0.3: a splitting error beyond +-1 becomes likely
    require_number("sigma_phase", sigma_phase, 0.0, math.pi)
    require_number("detector_noise_W", detector_noise_W, 0.0, 1.0)
    require_count("error_seed", error_seed, 0, highest=2**32 - 1)
    SeededNoise.check_noise_seed(noise_seed)


class MziBench(SeededNoise):
    """Shared state of one simulated mesh: what its simulated instruments act on."""

    device = "MZI"

    def __init__(self, modes: int, outputs: int, layout: str = "rectangular", heaters: dict | None = None,
                 loss_db_per_mzi: float = 0.0, input_full_scale_W: float = 1e-3, sigma_bs: float = 0.0,
                 sigma_phase: float = 0.0, error_seed: int = 0, detector_noise_W: float = 0.0,
                 noise_seed: int = 0) -> None:
        _check_device(sigma_bs, sigma_phase, error_seed, detector_noise_W, noise_seed)
        self.mesh = error_free_mesh(modes, outputs, layout, heaters, loss_db_per_mzi, input_full_scale_W)
        self.outputs, self.full_scale_W, self.error_seed = outputs, input_full_scale_W, error_seed
        self.nominal = {"sigma_bs": float(sigma_bs), "sigma_phase": float(sigma_phase),
                        "detector_noise_W": float(detector_noise_W)}
        self.heater_channels, self.max_current_A = self.mesh.layout.heaters, self.mesh.heaters.max_current_A
        self.currents = torch.zeros(self.heater_channels, dtype=torch.float64)
        self.inputs = torch.zeros(1, modes, dtype=torch.float64)
        self.seed_noise(noise_seed)
        self.reset_imperfections()

    @staticmethod
    def check_options(modes: int = 0, outputs: int = 0, layout: str = "rectangular",
                      heaters: dict | None = None, loss_db_per_mzi: float = 0.0,
                      input_full_scale_W: float = 1e-3, sigma_bs: float = 0.0, sigma_phase: float = 0.0,
                      error_seed: int = 0, detector_noise_W: float = 0.0, noise_seed: int = 0) -> None:
        """Validate rig-file options without building a bench."""
        error_free_mesh(modes, outputs, layout, heaters, loss_db_per_mzi, input_full_scale_W)
        _check_device(sigma_bs, sigma_phase, error_seed, detector_noise_W, noise_seed)

    def draw_errors(self, sigma_bs: float, sigma_phase: float, draw: int = 0) -> None:
        """Set the device's errors: draw 0 is the rig file's device, draw k another of the
        same process; one standard-normal draw scaled by each sigma, so sweeps over a sigma
        grow one device's errors."""
        layout = self.mesh.layout
        gen = torch.Generator().manual_seed(self.error_seed * 7919 + 104729 * draw)
        z = torch.randn(4 * layout.size, generator=gen, dtype=torch.float64)
        e1, e2 = (z[:layout.size] * sigma_bs).clamp(-1, 1), (z[layout.size:2 * layout.size] * sigma_bs).clamp(-1, 1)
        phase = torch.zeros(layout.heaters, dtype=torch.float64)
        phase[:2 * layout.size] = z[2 * layout.size:] * sigma_phase  # theta and phi, not psi
        self.mesh.errors = {"e1": e1, "e2": e2, "phase": phase}
        self.sigmas = (sigma_bs, sigma_phase)

    def read(self, averages: int = 1) -> torch.Tensor:
        """Port powers (W): (batch, outputs), or (P, batch, outputs) for a held stack."""
        power = port_power_W(self.mesh, self.inputs, self.currents, self.outputs, self.full_scale_W)
        if self.currents.ndim == 2:
            self.currents = self.currents[-1]
        if self.detector_noise_W == 0:
            return power
        # row by row, as a loop over the stack would draw
        rows = power.reshape(-1, *power.shape[-2:])
        noisy = torch.stack([row + torch.randn(row.shape, generator=self.generator, dtype=row.dtype)
                             * self.detector_noise_W / math.sqrt(averages) for row in rows])
        return noisy.reshape(power.shape)

    def set_imperfection(self, name: str, value: float, draw: int = 0) -> None:
        """Deviate from the rig file's mesh (names: the MZI system's imperfections)."""
        sigma_bs, sigma_phase = self.sigmas
        if name == "sigma_bs":
            self.draw_errors(float(value), sigma_phase, draw)
        elif name == "sigma_phase":
            self.draw_errors(sigma_bs, float(value), draw)
        elif name == "crosstalk_scale":
            self.mesh.crosstalk_scale = float(value)
        elif name == "detector_noise_W":
            self.detector_noise_W = float(value)
        else:
            raise KeyError(f"simulated MZI bench has no imperfection {name!r}")

    def reset_imperfections(self) -> None:
        """Back to the rig file's device."""
        self.draw_errors(self.nominal["sigma_bs"], self.nominal["sigma_phase"])
        self.mesh.crosstalk_scale = 1.0
        self.detector_noise_W = self.nominal["detector_noise_W"]


class SimulatedModeInputs(InputModulator):
    """Puts field amplitudes on the mesh's input modes: a value v carries v^2 of full scale."""

    def __init__(self, resource: MziBench) -> None:
        self.bench = resource
        self.channels = resource.mesh.layout.modes
        self.full_scale_W = resource.full_scale_W

    def identify(self) -> str:
        """Name the simulated device and its size."""
        return f"simulated MZI input modulator, {self.channels} modes"

    def load(self, values: np.ndarray) -> None:
        """Set each pattern's field amplitudes."""
        self.bench.inputs = torch.as_tensor(np.asarray(values, dtype=float))


class SimulatedPortDetectors(Photodetector):
    """Photodetectors on the mesh's first ``outputs`` ports."""

    def __init__(self, resource: MziBench, averages: int = 1) -> None:
        self.bench = resource
        self.channels = resource.outputs
        self.averages = averages

    @staticmethod
    def check_options(averages: int = 1) -> None:
        """Validate rig-file options without building detectors."""
        require_count("averages", averages, 1, highest=10_000)

    def identify(self) -> str:
        """Name the simulated device and its size."""
        return f"simulated MZI port detectors, {self.channels} channels"

    def read(self) -> np.ndarray:
        """Port powers (W), (batch, channels); (P, batch, channels) for a held stack."""
        return self.bench.read(self.averages).numpy()
