"""The D2NN forward model (System 3 preset) against an independent implementation."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from satlab.simulators.freespace.d2nn import PRESETS, D2nnImperfections, D2nnModel

BENCH = Path(__file__).parents[1] / "benchmarks" / "d2nn_speed.py"


def straightforward():
    """The benchmark's implementation from the paper's recipe (fftshifts, rebuilt transfer
    functions, complex128): written separately, it checks the model's chain, caching and
    plumbing; the physics itself is checked against closed forms in test_optics."""
    spec = importlib.util.spec_from_file_location("d2nn_speed", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(4, 64, 64, generator=gen, dtype=torch.float64)
    masks = torch.rand(2, 128, 128, generator=gen, dtype=torch.float64) * 2 * math.pi
    return images, masks


def test_the_model_matches_the_straightforward_implementation(inputs):
    images, masks = inputs
    ours = D2nnModel()(images, masks)
    reference = straightforward().naive_forward(images, masks)
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-13)
    assert ours.shape == (4, 10)
    torch.testing.assert_close(ours.sum(-1), torch.ones(4, dtype=torch.float64))


def test_single_precision_keeps_outputs_and_the_first_masks_gradient(inputs):
    images, masks = inputs
    labels = torch.tensor([1, 7, 3, 0])
    grads = []
    for dtype in (torch.float64, torch.float32):
        m = masks.to(dtype).clone().requires_grad_(True)
        out = D2nnModel()(images.to(dtype), m)
        F.cross_entropy(out / 0.1, labels).backward()
        grads.append(m.grad[0].double().flatten())
        assert torch.isfinite(m.grad).all() and m.grad.abs().max() > 0
    assert float(F.cosine_similarity(grads[0], grads[1], dim=0)) > 0.9999


def test_a_batch_split_into_chunks_gives_each_image_its_own_answer():
    # 20 images span three chunks of the model's batch loop; a chunk that mixed or
    # reordered images would differ from the image computed alone
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(20, 64, 64, generator=gen, dtype=torch.float64)
    masks = (torch.rand(2, 128, 128, generator=gen, dtype=torch.float64) * 2 * math.pi).requires_grad_(True)
    model = D2nnModel()
    batch = model.intensity(images, masks)
    alone = torch.cat([model.intensity(image[None], masks) for image in images])
    torch.testing.assert_close(batch, alone, rtol=1e-12, atol=0)
    grad_batch, = torch.autograd.grad(batch.square().sum(), masks)
    grad_alone, = torch.autograd.grad(alone.square().sum(), masks)
    torch.testing.assert_close(grad_batch, grad_alone, rtol=1e-9, atol=1e-12)


def test_misalignment_changes_the_answer_and_none_changes_nothing(inputs):
    images, masks = inputs
    model = D2nnModel()
    clean = model(images, masks)
    torch.testing.assert_close(model(images, masks, D2nnImperfections()), clean, rtol=0, atol=0)
    for bench in (D2nnImperfections(mask_rotation_rad=math.radians(1)),
                  D2nnImperfections(mask_shift_px=(0.0, 2.0)),
                  D2nnImperfections(axial_error=100e-6)):
        assert (model(images, masks, bench) - clean).abs().max() > 1e-4


def test_the_multilayer_preset_has_five_masks():
    params = PRESETS["lin_5layer"]
    assert params.masks == 5
    masks = torch.zeros(5, 128, 128, dtype=torch.float64)
    out = D2nnModel(params)(torch.ones(1, 64, 64, dtype=torch.float64), masks)
    assert out.shape == (1, 10)
    with pytest.raises(ValueError):
        D2nnModel(params)(torch.ones(1, 64, 64, dtype=torch.float64), masks[:2])
