"""Free-space optics against closed forms (simulators/freespace/optics.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from satlab.simulators.freespace import optics

from satlab.camera_readout import region_sums, square_regions
from satlab.phase_lut import PhaseLut

LAMBDA, PITCH = 532e-9, 2e-6


def second_moment_radius(intensity: torch.Tensor, pitch: float) -> float:
    """The 1/e² radius of a Gaussian from its second moment along x: w = 2 sqrt(<x²>)."""
    y, x = optics.grid_coordinates(tuple(intensity.shape), pitch)
    return 2 * math.sqrt(float((intensity * x**2).sum() / intensity.sum()))


@pytest.mark.parametrize("z_mm", [2.0, 10.0])
def test_a_gaussian_beam_spreads_as_w0_sqrt_1_plus_z_over_zr_squared(z_mm):
    w0, z = 30e-6, z_mm * 1e-3
    beam = optics.gaussian_beam((256, 256), PITCH, w0)
    assert second_moment_radius(beam.abs() ** 2, PITCH) == pytest.approx(w0, rel=1e-3)
    out = optics.propagate(beam, PITCH, LAMBDA, z)
    z_r = math.pi * w0**2 / LAMBDA
    assert second_moment_radius(out.abs() ** 2, PITCH) == pytest.approx(
        w0 * math.sqrt(1 + (z / z_r) ** 2), rel=5e-3)


def test_energy_is_conserved_without_evanescent_light_and_lost_with_it():
    gen = torch.Generator().manual_seed(0)
    field = torch.randn(2, 64, 64, dtype=torch.complex128, generator=gen)
    # 2 um pixels: the grid's highest frequency 1/(2p) is below 1/lambda, nothing evanescent
    out = optics.propagate(field, PITCH, LAMBDA, 3e-3)
    torch.testing.assert_close(out.abs().pow(2).sum((-2, -1)), field.abs().pow(2).sum((-2, -1)),
                               rtol=1e-12, atol=0)
    # 0.1 um pixels: most of this white-noise field lies beyond the light cone and decays
    fine = optics.propagate(field, 0.1e-6, LAMBDA, 2e-6)
    kept = fine.abs().pow(2).sum() / field.abs().pow(2).sum()
    fx = np.fft.fftfreq(64, 0.1e-6)
    propagating = ((fx[:, None] ** 2 + fx[None, :] ** 2) < 1 / LAMBDA**2).mean()
    assert float(kept) == pytest.approx(propagating, rel=0.15)  # white noise: power ∝ modes kept
    assert float(kept) < 0.5


def test_a_lens_focuses_a_plane_wave_to_the_diffraction_limited_spot_at_f():
    n, f, aperture = 512, 5e-3, 128  # square aperture of 128 px = 256 um
    y, x = optics.grid_coordinates((n, n), PITCH)
    inside = (x.abs() < aperture * PITCH / 2) & (y.abs() < aperture * PITCH / 2)
    field = inside.to(torch.complex128) * optics.lens((n, n), PITCH, LAMBDA, f)
    focus = optics.propagate(field, PITCH, LAMBDA, f).abs() ** 2
    # Fraunhofer at the focal plane: sinc²(D x / (λ f)) along each axis
    d = aperture * PITCH
    row = focus[n // 2 - 1: n // 2 + 1].mean(0)  # the two rows beside the axis (even grid)
    expected = np.sinc(d * x[0].numpy() / (LAMBDA * f)) ** 2 * np.sinc(d * y[n // 2, 0].item() / (LAMBDA * f)) ** 2
    central = np.abs(x[0].numpy()) < 2 * LAMBDA * f / d  # the main lobe and the first side lobes
    measured = (row / row.max()).numpy()[central]
    np.testing.assert_allclose(measured, expected[central] / expected.max(), atol=0.02)
    # and the spot is tightest at f: the peak is lower 10 % before and after
    peak = focus.max()
    for z in (0.9 * f, 1.1 * f):
        assert optics.propagate(field, PITCH, LAMBDA, z).abs().pow(2).max() < 0.9 * peak


def test_propagation_commutes_with_a_shift_of_mask_and_field():
    gen = torch.Generator().manual_seed(1)
    field = optics.gaussian_beam((96, 96), PITCH, 20e-6)  # ~1e-10 at the edges
    mask = torch.rand(96, 96, generator=gen, dtype=torch.float64) * 2 * math.pi
    shifted_mask = optics.affine_resample(mask, shift_px=(3.0, -5.0))
    # an integer shift moves every pixel exactly, zero filling what comes in
    expected = torch.zeros_like(mask)
    expected[3:, :91] = mask[:93, 5:]
    torch.testing.assert_close(shifted_mask, expected, rtol=0, atol=1e-12)
    # the field through the shifted mask is the shifted field through the mask
    out = optics.propagate(torch.roll(field, (3, -5), (0, 1)) * torch.polar(torch.ones_like(mask), shifted_mask),
                           PITCH, LAMBDA, 4e-3)
    ref = torch.roll(optics.propagate(field * torch.polar(torch.ones_like(mask), mask), PITCH, LAMBDA, 4e-3),
                     (3, -5), (0, 1))
    # the beam is ~0 where the shift brought in zeros, so the two agree everywhere
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_a_quarter_turn_is_rot90_and_scale_one_is_identity():
    image = torch.arange(64.0, dtype=torch.float64).reshape(8, 8)
    turned = optics.affine_resample(image, rotation_rad=math.pi / 2)
    torch.testing.assert_close(turned, torch.rot90(image, 1), rtol=0, atol=1e-9)
    torch.testing.assert_close(optics.affine_resample(image), image, rtol=0, atol=1e-12)


@pytest.mark.parametrize("angle_deg, shift, scale", [(7.0, (2.0, -3.0), 1.0), (-20.0, (0.0, 0.0), 1.0),
                                                     (0.0, (0.0, 0.0), 1.25)])
def test_a_blob_moves_where_rotation_shift_and_scale_put_it(angle_deg, shift, scale):
    rows, cols = 96, 160  # not square: the normalised coordinates differ per axis
    y, x = optics.grid_coordinates((rows, cols), 1.0)
    cy, cx, w = -12.0, 25.0, 3.0
    blob = torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / w**2)
    moved = optics.affine_resample(blob, math.radians(angle_deg), shift, scale)
    a = math.radians(angle_deg)
    # anticlockwise as displayed (rows grow downwards), then scaled, then shifted
    ex = scale * (cx * math.cos(a) + cy * math.sin(a)) + shift[1]
    ey = scale * (-cx * math.sin(a) + cy * math.cos(a)) + shift[0]
    got_y = float((moved * y).sum() / moved.sum())
    got_x = float((moved * x).sum() / moved.sum())
    assert (got_y, got_x) == pytest.approx((ey, ex), abs=0.02)
    assert float(moved.sum()) == pytest.approx(float(blob.sum()) * scale**2, rel=0.01)


def test_quantisation_gives_exactly_two_to_the_bits_levels_and_passes_gradients():
    phase = torch.linspace(-7, 7, 20_000, dtype=torch.float64, requires_grad=True)
    for bits in (1, 3, 8):
        lut = PhaseLut.linear(bits)
        shown = optics.quantise_phase(phase, lut)
        levels = torch.unique(torch.remainder(shown.detach(), 2 * math.pi).round(decimals=9))
        assert len(levels) == 2**bits
        np.testing.assert_allclose(np.sort(levels.numpy()), lut.phases, atol=1e-9)
        (grad,) = torch.autograd.grad(shown.sum(), phase)
        assert torch.equal(grad, torch.ones_like(phase))


def test_slm_pixels_fill_factor_and_fringing():
    phase = torch.tensor([[0.0, math.pi], [math.pi / 2, 0.0]], dtype=torch.float64)
    t = optics.slm_pixels(phase, upsample=4)
    assert t.shape == (8, 8)
    torch.testing.assert_close(torch.angle(t[4:, :4]), torch.full((4, 4), math.pi / 2, dtype=torch.float64))
    gapped = optics.slm_pixels(phase, upsample=4, fill_factor=0.25)  # active 2x2 of each 4x4
    unmodulated = torch.isclose(gapped, torch.ones_like(gapped))
    assert int(unmodulated[:4, 4:].sum()) == 16 - 4  # the π pixel keeps only its centre
    assert torch.isclose(gapped[1:3, 5:7], -torch.ones(2, 2, dtype=gapped.dtype)).all()
    smooth = optics.slm_pixels(phase, upsample=4, fringing_px=1.0)
    edge = torch.angle(smooth[1, 3:5])  # across the 0 | π edge the phase now ramps
    assert 0 < float(edge[0]) < math.pi / 2 < float(edge[1]) < math.pi
    flat = optics.slm_pixels(torch.full((2, 2), 1.0, dtype=torch.float64), 4, fringing_px=2.0)
    torch.testing.assert_close(torch.angle(flat), torch.ones(8, 8, dtype=torch.float64))


def test_detector_regions_sum_what_their_camera_pixels_hold():
    regions = square_regions((128, 128), 9, (3, 4, 3), spacing=24)
    assert regions.shape == (10, 128, 128)
    assert regions.sum((1, 2)).tolist() == [81] * 10
    assert int(regions.sum(0).max()) == 1  # disjoint
    gen = torch.Generator().manual_seed(2)
    intensity = torch.rand(5, 128, 128, generator=gen, dtype=torch.float64)
    sums = region_sums(intensity, regions)
    by_hand = torch.stack([torch.stack([img[m].sum() for m in regions]) for img in intensity])
    torch.testing.assert_close(sums, by_hand, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="leaves the 32x32 grid"):
        square_regions((32, 32), 9, (3, 4, 3), spacing=24)


def test_camera_integrates_pixels_clips_at_full_well_and_digitises():
    intensity = torch.zeros(1, 8, 8, dtype=torch.float64)
    intensity[0, :2, :2] = 1.0  # one binned camera pixel fully lit
    intensity[0, 2:4, :2] = 10.0  # one far beyond the full well
    counts = optics.camera_counts(intensity, binning=2, electrons_per_unit=400.0, full_well_e=4000.0,
                                  bit_depth=12)
    assert counts.shape == (1, 4, 4)
    assert counts[0, 0, 0] == 1638  # 4 grid pixels x 400 e- = 1600 e-, of 4000 e- at 4095
    assert counts[0, 1, 0] == 4095 and counts.sum() == counts[0, 0, 0] + 4095
    gen = torch.Generator().manual_seed(3)
    flat = torch.full((1, 200, 200), 1.0, dtype=torch.float64)
    noisy = optics.camera_counts(flat, 1, 400.0, 4000.0, 16, read_noise_e=0.0, generator=gen)
    electrons = noisy * 4000.0 / 65535
    assert float(electrons.mean()) == pytest.approx(400, rel=0.01)
    assert float(electrons.var()) == pytest.approx(400, rel=0.05)  # shot noise: variance = mean


def test_padding_lets_light_leave_the_window_instead_of_wrapping_around():
    beam = torch.roll(optics.gaussian_beam((64, 64), PITCH, 6e-6), 26, dims=1)  # near the right edge
    wrapped = optics.propagate(beam, PITCH, LAMBDA, 1e-3)
    padded = optics.propagate(beam, PITCH, LAMBDA, 1e-3, pad=64)
    assert padded.shape == wrapped.shape == beam.shape
    energy = float(beam.abs().pow(2).sum())
    assert float(wrapped.abs().pow(2).sum()) == pytest.approx(energy, rel=1e-12)  # all wrapped back
    assert float(wrapped[:, :16].abs().pow(2).sum()) > 0.01 * energy  # ...onto the left edge
    assert float(padded.abs().pow(2).sum()) < 0.9 * energy  # padded: it left through the right
    assert float(padded[:, :16].abs().pow(2).sum()) < 1e-4 * energy  # 0.2 of it without padding
