"""The system protocol: batched probes equal the one-at-a-time loop, refused stacks write
nothing, estimators are unbiased, and a system defined only in the tests trains unchanged."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import toy_polarizer
from conftest import bank_rig, tiny_config, write_yaml

from satlab.cli import main as satlab
from satlab.estimators import FiniteDifference, Spsa
from satlab.rig import Rig, RigLimitError
from satlab.rigfile import RigSpec
from satlab.systems import ControlSpace, LayerBackend, MacroPixels, system_for

NOISY_BANK = {"rows": 3, "cols": 5, "preset": "tait_bank", "limits": {"max_current": 0.012},
              "bench_overrides": {"detector_noise_W": 3e-6}}


def open_bank(averages: int = 2, log_values: int = 2**22, **kwargs) -> tuple[Rig, LayerBackend]:
    data = bank_rig(**{**NOISY_BANK, **kwargs})
    data["instruments"]["heaters"]["options"] = {"record": True}
    data["instruments"]["pd"]["options"] = {"averages": averages}
    spec = RigSpec.model_validate(data)
    rig = Rig(spec, log_values=log_values).__enter__()
    return rig, system_for(spec).build_layers(rig)[0]


def count_physics_calls(rig: Rig) -> list[int]:
    """Wrap the simulated bench's read: the list grows by one per physics evaluation."""
    bench, calls = rig.resources["chip"], []
    inner = bench.read
    bench.read = lambda averages=1: calls.append(1) or inner(averages)
    return calls


def test_query_many_equals_one_at_a_time_reading_for_reading_with_noise():
    """Shot noise, detector noise, 12-bit ADC and averaging: same readings, same RNG stream."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(7, 5, generator=gen)
    probes = (torch.rand(12, 15, generator=gen, dtype=torch.float64) * 0.012).numpy()
    results = {}
    for path in ("stacked", "loop", "one call per probe"):
        rig, layer = open_bank()
        calls = count_physics_calls(rig)
        rig.stack_probes = path == "stacked"
        if path == "one call per probe":
            readings = np.stack([layer.query(x, p) for p in probes])
        else:
            readings = layer.query_many(x, probes)
        source = rig.source("heaters")
        results[path] = (readings, np.array(source.history), source.get_currents(),
                         rig.resources["chip"].generator.get_state(), len(calls), rig.writes)
        rig.__exit__(None, None, None)
    stacked, loop, single = results.values()
    assert stacked[4] == 1 and loop[4] == 12 == single[4]  # one vectorised physics call
    for other in (loop, single):
        assert np.array_equal(stacked[0], other[0])
        assert np.array_equal(stacked[1], other[1])  # the same rows applied in the same order
        assert np.array_equal(stacked[2], other[2]) and np.array_equal(stacked[2], probes[-1])
        assert torch.equal(stacked[3], other[3])  # noise generator left in the same state
        assert stacked[5] == other[5]
    assert stacked[0].std(axis=0).min() > 0  # noise present: the test could fail on RNG order


@pytest.mark.parametrize("corrupt,message", [
    (lambda p: p.__setitem__((3, 2), np.nan), r"probe 3: non-finite current requested on channels \[2\]"),
    (lambda p: p.__setitem__((5, 0), 0.02), r"probe 5: channel 0 requested 0.02 A, allowed \[0, 0.012\]"),
])
def test_a_stack_with_one_illegal_probe_is_refused_whole(corrupt, message):
    rig, layer = open_bank()
    try:
        x = torch.rand(4, 5, dtype=torch.float64)
        layer.query(x, np.full(15, 0.004))
        source, bench = rig.source("heaters"), rig.resources["chip"]
        before = (list(rig.commands), len(source.history), source.get_currents(),
                  bench.inputs.clone(), rig.writes, layer.queries)
        probes = np.full((8, 15), 0.005)
        corrupt(probes)
        with pytest.raises(RigLimitError, match=message):
            layer.query_many(torch.rand(4, 5, dtype=torch.float64), probes)  # new inputs too
        after = (list(rig.commands), len(source.history), source.get_currents(),
                 bench.inputs.clone(), rig.writes, layer.queries)
    finally:
        rig.__exit__(None, None, None)
    assert before[0] == after[0] and before[1] == after[1] and before[4:] == after[4:]
    assert np.array_equal(before[2], after[2]) and torch.equal(before[3], after[3])


def test_the_command_log_keeps_recent_stacks_within_its_value_budget():
    """A training run logs thousands of probe stacks: the log must not keep them all."""
    rig, layer = open_bank(log_values=2000)
    try:
        x = torch.rand(4, 5, dtype=torch.float64)
        stacks = [np.full((40, 15), 0.001 * (k + 1)) for k in range(10)]  # 600 values each
        for probes in stacks:
            layer.query_many(x, probes)
        logged = [c.value for c in rig.commands if c.action == "set_current_stack"]
        held = sum(np.size(c.value) for c in rig.commands)
    finally:
        rig.__exit__(None, None, None)
    assert held <= 2000
    assert len(logged) == 3  # the newest three fit, together with the small entries after them
    for value, probes in zip(logged, stacks[-3:]):
        assert np.array_equal(value, probes)


def test_estimators_hand_each_layer_one_stack_per_step():
    rig, layer = open_bank(averages=1, bench_overrides={"detector_noise_W": 0.0, "adc_bits": None,
                                                        "shot_noise_bandwidth_Hz": 0.0})
    try:
        calls = count_physics_calls(rig)
        x, c = torch.rand(4, 5, dtype=torch.float64), torch.full((15,), 0.004, dtype=torch.float64)
        y, g = layer.evaluate(x, c), torch.randn(4, 3, dtype=torch.float64)
        for estimator, probes in ((FiniteDifference(1e-6), 30), (Spsa(1e-6, directions=4), 8)):
            calls.clear()
            writes = rig.writes
            estimator.control_grad(layer, x, c, y, g)
            assert len(calls) == 1 and rig.writes - writes == probes
    finally:
        rig.__exit__(None, None, None)


class QuadraticLayer(LayerBackend):
    """Output o = 1/2 c_o^T A_o c_o + b_o . c_o over its own block of controls: central
    differences are exact, so an estimator's mean must be the true gradient."""

    def __init__(self, outputs: int = 3, block: int = 5, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        n = outputs * block
        self.name, self.in_features, self.out_features = "quadratic", 1, outputs
        self.controls = ControlSpace("knob", "1", -torch.ones(n, dtype=torch.float64),
                                     torch.ones(n, dtype=torch.float64))
        self.control_outputs = np.repeat(np.arange(outputs), block)
        m = torch.randn(outputs, block, block, generator=gen, dtype=torch.float64)
        self.A, self.b = (m + m.transpose(1, 2)).numpy(), torch.randn(outputs, block, generator=gen).numpy()
        self.block = block

    def measure(self, x, settings):
        c = settings.reshape(len(settings), self.out_features, self.block)
        out = 0.5 * np.einsum("pok,okl,pol->po", c, self.A, c) + np.einsum("pok,ok->po", c, self.b)
        return out[:, None, :]

    def true_gradient(self, c: np.ndarray, g_out: np.ndarray) -> np.ndarray:
        c = c.reshape(self.out_features, self.block)
        return (g_out[0][:, None] * (np.einsum("okl,ol->ok", self.A, c) + self.b)).ravel()


@pytest.mark.parametrize("distribution,blockwise,directions", [
    ("rademacher", False, 3), ("rademacher", True, 3), ("hadamard", False, 5), ("hadamard", True, 3)])
def test_spsa_is_unbiased_on_a_quadratic(distribution, blockwise, directions):
    layer = QuadraticLayer()
    c = torch.linspace(-0.5, 0.5, 15, dtype=torch.float64)
    g_out = torch.tensor([[0.7, -1.3, 0.4]], dtype=torch.float64)
    truth = layer.true_gradient(c.numpy(), g_out.numpy())
    spsa = Spsa(step=0.1, directions=directions, seed=3, distribution=distribution, blockwise=blockwise)
    y = layer.evaluate(torch.zeros(1, 1), c)
    draws = np.stack([spsa.control_grad(layer, None, c, y, g_out).numpy() for _ in range(4000)])
    standard_error = draws.std(axis=0) / np.sqrt(len(draws))
    assert (np.abs(draws.mean(axis=0) - truth) < 4 * standard_error + 1e-12).all()
    assert draws.std(axis=0).max() > 0.05 * np.abs(truth).max()  # random: not a copy of the truth


def test_orthogonal_blockwise_directions_recover_the_gradient_exactly_and_beat_iid_signs():
    layer = QuadraticLayer(block=4)
    c = torch.linspace(-0.5, 0.5, 12, dtype=torch.float64)
    g_out = torch.tensor([[0.7, -1.3, 0.4]], dtype=torch.float64)
    truth = layer.true_gradient(c.numpy(), g_out.numpy())
    y = layer.evaluate(torch.zeros(1, 1), c)
    full = Spsa(step=0.1, directions=4, seed=0, distribution="hadamard", blockwise=True)
    for _ in range(20):  # k = block size: exact on every draw, whatever the random signs
        assert np.allclose(full.control_grad(layer, None, c, y, g_out).numpy(), truth, atol=1e-9)
    errors = {}
    for name, est in (("iid", Spsa(0.1, directions=2, seed=0)),
                      ("orthogonal", Spsa(0.1, directions=2, seed=0, distribution="hadamard",
                                          blockwise=True))):
        draws = np.stack([est.control_grad(layer, None, c, y, g_out).numpy() for _ in range(2000)])
        errors[name] = float(((draws - truth) ** 2).sum(axis=1).mean())
    assert errors["orthogonal"] < errors["iid"] / 3


def test_macro_pixels_expand_blocks_and_take_the_tightest_bound():
    macro = MacroPixels(4, 6, 2)
    controls = torch.arange(6, dtype=torch.float64, requires_grad=True)
    device = macro(controls)
    assert macro.size == 6 and device.shape == (24,)
    assert device.reshape(4, 6)[:2, :2].eq(0).all() and device.reshape(4, 6)[2:, 4:].eq(5).all()
    device.sum().backward()
    assert controls.grad.eq(4).all()  # each control drives 2x2 pixels
    upper = torch.full((24,), 2.0)
    upper[7] = 1.5  # pixel (1, 1): block (0, 0)
    assert macro.bound(upper, upper=True).tolist() == [1.5, 2, 2, 2, 2, 2]
    with pytest.raises(ValueError, match="does not tile"):
        MacroPixels(5, 6, 2)


def test_a_system_defined_only_in_the_tests_trains_through_the_unchanged_controller(tmp_path):
    rig_path = write_yaml(tmp_path / "toy-rig.yaml", toy_polarizer.rig_file())
    cfg = tiny_config(rig_path, methods=["sat"], epochs=3)
    cfg["model"]["physical"] = [8, 10]
    cfg["estimator"] = {"name": "spsa", "directions": 8, "step": 1e-5,
                        "distribution": "hadamard", "blockwise": True}
    cfg["training"]["lr_controls"] = 3e-4
    run = tmp_path / "run"
    assert satlab(["train", str(write_yaml(tmp_path / "cfg.yaml", cfg)), "--run-dir", str(run),
                   "--quiet"]) == 0
    summary = json.loads((run / "sat" / "summary.json").read_text())
    with open(run / "sat" / "metrics.csv") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    assert summary["controls"] == [{**summary["controls"][0], "layer": "rotators",
                                    "quantity": "coil current", "unit": "A", "count": 80}]
    assert 0 <= summary["controls"][0]["min"] <= summary["controls"][0]["max"] <= np.pi / 2 / 100
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.2  # it learns
    assert summary["test_accuracy"] > 0.3  # 10 classes: chance is 0.1
    # the toy's own imperfection through the same rig interface
    spec = RigSpec.model_validate(toy_polarizer.rig_file())
    with Rig(spec) as rig:
        rig.set_imperfection("misalignment_rad", 0.1)
        assert rig.resources["bench"].misalignment == 0.1
    assert list(system_for(spec).imperfections) == ["misalignment_rad"]
