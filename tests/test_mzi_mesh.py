"""MZI mesh physics and programming against closed forms and an MZI-by-MZI reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from satlab.simulators.mzi.mesh import (
    HeaterParams,
    MziMesh,
    mesh_unitary,
    propagate,
    rectangular,
    triangular,
)
from satlab.simulators.mzi.programming import (
    decompose,
    fidelity,
    haar_unitary,
    refine_for_errors,
)

LAYOUTS = (rectangular, triangular)


def random_phases(layout, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(layout.heaters, generator=gen, dtype=torch.float64) * 2 * math.pi


def split(layout, phases):
    n = layout.size
    return phases[:n], phases[n:2 * n], phases[2 * n:]


def coupler(e: float) -> np.ndarray:
    """A directional coupler with power splitting (1 + e)/2 : (1 - e)/2, lossless."""
    t, r = math.sqrt((1 + e) / 2), math.sqrt((1 - e) / 2)
    return np.array([[t, 1j * r], [1j * r, t]])


def mzi_by_mzi(layout, theta, phi, psi, e1, e2, amplitude=1.0) -> np.ndarray:
    """The mesh as the product of one N x N matrix per MZI, in the order light meets them."""
    n = layout.modes
    u = np.eye(n, dtype=complex)
    for k, m in enumerate(layout.pairs):
        block = (coupler(e2[k]) @ np.diag([np.exp(1j * theta[k]), 1]) @ coupler(e1[k])
                 @ np.diag([np.exp(1j * phi[k]), 1]))
        step = np.eye(n, dtype=complex)
        step[m:m + 2, m:m + 2] = amplitude * block
        u = step @ u
    return np.diag(np.exp(1j * psi)) @ u


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("modes", [2, 5, 16])
def test_an_error_free_mesh_is_unitary(layout, modes):
    mesh = layout(modes)
    assert mesh.size == modes * (modes - 1) // 2
    u = mesh_unitary(mesh, *split(mesh, random_phases(mesh, modes)))
    assert torch.allclose(u @ u.conj().T, torch.eye(modes, dtype=torch.complex128), atol=1e-6)


def test_the_layouts_have_the_columns_of_their_papers():
    assert len(rectangular(8).columns) == 8  # Clements: depth N
    assert len(triangular(8).columns) == 2 * 8 - 3  # Reck: depth 2N - 3
    for layout in (rectangular(9), triangular(9)):
        for col in layout.columns:  # a column's MZIs never share a mode
            modes = np.concatenate([layout.pairs[col], layout.pairs[col] + 1])
            assert len(set(modes)) == len(modes)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_column_at_once_equals_an_mzi_by_mzi_product(layout):
    mesh = layout(7)
    gen = np.random.default_rng(3)
    theta, phi, psi = (p.numpy() for p in split(mesh, random_phases(mesh, 1)))
    e1, e2 = gen.normal(0, 0.1, mesh.size), gen.normal(0, 0.1, mesh.size)
    expected = mzi_by_mzi(mesh, theta, phi, psi, e1, e2, amplitude=10 ** (-0.2 / 20))
    got = mesh_unitary(mesh, *(torch.from_numpy(p) for p in (theta, phi, psi)),
                       torch.from_numpy(e1), torch.from_numpy(e2), mzi_amplitude=10 ** (-0.2 / 20))
    assert np.abs(got.numpy() - expected).max() < 1e-12
    # a stack of P phase vectors is P meshes at once, on a batch of fields
    fields = torch.from_numpy(gen.normal(size=(4, 7)) + 0j)
    phases = torch.stack([random_phases(mesh, s) for s in (1, 2)])
    n = mesh.size
    both = propagate(fields, mesh, phases[:, :n], phases[:, n:2 * n], phases[:, 2 * n:])
    for p in range(2):
        one = mesh_unitary(mesh, *split(mesh, phases[p]))
        assert torch.allclose(both[p], fields @ one.T, atol=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("modes", [8, 16, 64])
def test_decomposition_reproduces_haar_unitaries(layout, modes):
    mesh = layout(modes)
    for seed in range(2):
        target = haar_unitary(modes, np.random.default_rng(seed))
        got = mesh_unitary(mesh, *split(mesh, decompose(mesh, target)))
        assert float(fidelity(torch.from_numpy(target), got)) > 0.999
        assert np.abs(got.numpy() - target).max() < 1e-9  # equal, global phase included


def test_haar_unitaries_are_unitary_and_spread():
    u = haar_unitary(64, np.random.default_rng(0))
    assert np.allclose(u @ u.conj().T, np.eye(64), atol=1e-12)
    # |u_ij|^2 of a Haar unitary is Beta(1, N-1): mean 1/N, variance (N-1)/(N^2 (N+1))
    power = np.abs(u) ** 2
    assert power.mean() == pytest.approx(1 / 64, rel=1e-9)
    assert power.var() == pytest.approx(63 / (64 ** 2 * 65), rel=0.1)


def test_an_mzi_passes_its_insertion_loss_whatever_its_phases():
    mesh = rectangular(2)
    for seed in range(3):
        u = mesh_unitary(mesh, *split(mesh, random_phases(mesh, seed)), mzi_amplitude=10 ** (-0.5 / 20))
        column_power = (u.abs() ** 2).sum(0)  # each input's light, both outputs
        assert torch.allclose(column_power, torch.full((2,), 10 ** (-0.05), dtype=torch.float64))


def test_heaters_set_phase_by_power_and_warm_their_neighbours():
    layout = rectangular(6)
    heaters = HeaterParams(resistance_ohm=400.0, efficiency_rad_per_W=250.0, crosstalk=0.1)
    mesh = MziMesh(layout, heaters)
    currents = torch.zeros(layout.heaters, dtype=torch.float64)
    first = int(layout.columns[0][0])  # MZI on modes 0, 1 in column 0
    currents[first] = 0.005
    phases = mesh.phases(currents)
    assert float(phases[first]) == pytest.approx(250.0 * 400.0 * 0.005 ** 2)
    # its neighbour in the column (modes 2, 3) gets a tenth; nothing else moves
    neighbour = int(layout.columns[0][np.flatnonzero(layout.pairs[layout.columns[0]] == 2)[0]])
    assert float(phases[neighbour]) == pytest.approx(0.1 * 250.0 * 400.0 * 0.005 ** 2)
    assert int((phases != 0).sum()) == 2


@pytest.mark.parametrize("crosstalk", [0.0, 0.08])
def test_currents_for_phases_program_the_unitary_through_the_heaters(crosstalk):
    layout = rectangular(8)
    mesh = MziMesh(layout, HeaterParams(crosstalk=crosstalk))
    target = haar_unitary(8, np.random.default_rng(5))
    currents = mesh.currents_for_phases(decompose(layout, target))
    assert float(currents.min()) >= 0 and float(currents.max()) <= mesh.heaters.max_current_A
    assert np.abs(mesh.unitary(currents).numpy() - target).max() < 1e-9


def test_coupler_errors_lose_fidelity_that_error_aware_programming_recovers():
    layout = rectangular(8)
    gen = torch.Generator().manual_seed(0)
    errors = {k: torch.randn(layout.size, generator=gen, dtype=torch.float64) * 0.05 for k in ("e1", "e2")}
    mesh = MziMesh(layout, errors=errors)
    target = torch.from_numpy(haar_unitary(8, np.random.default_rng(2)))
    naive = decompose(layout, target.numpy())
    refined = refine_for_errors(mesh, target, naive)
    f_naive = float(fidelity(target, mesh.unitary(mesh.currents_for_phases(naive))))
    f_refined = float(fidelity(target, mesh.unitary(mesh.currents_for_phases(refined))))
    assert f_naive < 0.995  # errors of 5 % cost fidelity when ignored
    assert f_refined > 0.9999 and f_refined > f_naive
