"""Shared fixtures: small rig and config files written the way users write them."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

# The installed console script, as users run it. (Not "python -m satlab": that puts the
# working directory on sys.path, and the source folder satlab/ lacks the installed
# satlab.simulators / satlab.drivers, which live in simulators/ and drivers/.)
SATLAB = str(Path(sys.executable).with_name("satlab"))


def bank_rig(rows: int = 4, cols: int = 6, preset: str = "paper_system1", seed: int = 3,
             limits: dict | None = None, heater_options: dict | None = None,
             bench_overrides: dict | None = None) -> dict:
    """A one-layer simulated MRR rig as a rig-file mapping."""
    bench = {"rows": rows, "cols": cols, "preset": preset, "seed": seed, **(bench_overrides or {})}
    return {
        "name": "test-bank",
        "resources": {"chip": {"driver": "simulated.mrr_bench", "options": bench}},
        "instruments": {
            "heaters": {"kind": "current_source", "driver": "simulated.mrr_heaters",
                        "resource": "chip", "options": heater_options or {},
                        "limits": limits or {"max_current": 0.024}},
            "inputs": {"kind": "input_modulator", "driver": "simulated.mrr_inputs", "resource": "chip"},
            "pd": {"kind": "photodetector", "driver": "simulated.mrr_detectors", "resource": "chip"},
        },
        "system": {"type": "mrr_weight_bank", "layers": [{
            "name": "fc", "in_features": cols, "out_features": rows, "heaters": "heaters",
            "inputs": "inputs", "detector": "pd",
            "twin": {"driver": "twin.mrr_bank", "options": dict(bench)}}]},
    }


def write_yaml(path: Path, data: dict) -> Path:
    """Write a mapping as YAML and return the path."""
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


TWO_LAYER_RIG = Path(__file__).resolve().parents[1] / "satlab" / "configs" / "mrr-sim.yaml"


def train_process(*args) -> subprocess.Popen:
    """``satlab train ARGS --quiet`` started in the background."""
    return subprocess.Popen([SATLAB, "train", *map(str, args), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_at_first_checkpoint(proc: subprocess.Popen, checkpoint: Path) -> None:
    """SIGKILL a training process as soon as it has written ``checkpoint``."""
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def tiny_config(rig: Path, **training) -> dict:
    """A training config small enough for a test: 12 digits per class, one epoch."""
    return {
        "name": "tiny",
        "rig": str(rig),
        "data": {"source": "offline", "train_per_class": 12, "test_per_class": 5},
        "model": {"conv_channels": [], "physical": [32, 16, 10]},
        "estimator": {"name": "spsa", "directions": 4},
        "training": {"epochs": 1, "batch_size": 24, "checkpoint_every": 2, "log_every": 1,
                     **training},
        "evaluation": {"drift": "0:2:3", "batch_size": 50},
    }


@pytest.fixture
def rig_file(tmp_path: Path) -> Path:
    """A small one-layer simulated rig file."""
    return write_yaml(tmp_path / "rig.yaml", bank_rig())


FREESPACE_RIG = Path(__file__).resolve().parents[1] / "satlab" / "configs" / "freespace-sim.yaml"


@pytest.fixture
def freespace_opened():
    """The shipped free-space rig, open, with its layer backends."""
    from satlab.rig import Rig
    from satlab.rigfile import load_rig_file
    from satlab.systems import system_for

    spec = load_rig_file(FREESPACE_RIG)
    with Rig(spec, FREESPACE_RIG) as rig:
        yield rig, system_for(spec, FREESPACE_RIG).build_layers(rig)


def random_weights_and_images(layer, seed: int, batch: int = 5):
    """Weights uniform in [-1, 1] for every control of ``layer``, and dim random images."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(layer.n_controls, generator=gen, dtype=torch.float64) * 2 - 1
    images = torch.rand(batch, layer.in_features, generator=gen, dtype=torch.float64) * 0.3
    return weights, images


def freespace_config(tmp_path: Path, rig: Path = FREESPACE_RIG, **training) -> Path:
    """A small SAT config for the free-space rig (40 digits: two steps an epoch), written out."""
    return write_yaml(tmp_path / "fs.yaml", {
        "name": "fs-tiny", "rig": str(rig),
        "data": {"train_per_class": 4, "test_per_class": 2},
        "model": {"front": "image", "physical": [784, 144, 10], "activation": "sigmoid",
                  "readout_scale": 10, "init_weight_range": 0.3},
        "estimator": {"name": "physics_aware"},
        "training": {"methods": ["sat"], "epochs": 1, "batch_size": 20, "lr_controls": 0.01,
                     "lr_digital": 0.01, "rho": 0.1, "adaptive": False, **training}})


@contextmanager
def opened_layer(path: Path):
    """A rig file's rig, open, and its one physical layer's backend."""
    from satlab.rig import Rig
    from satlab.rigfile import load_rig_file
    from satlab.systems import system_for

    spec = load_rig_file(path)
    with Rig(spec, path) as rig:
        (layer,) = system_for(spec, path).build_layers(rig)
        yield rig, layer


def random_inputs(batch: int, size: int, seed: int = 0):
    """Inputs uniform in [0, 1), (batch, size), float64."""
    import torch

    return torch.rand(batch, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
