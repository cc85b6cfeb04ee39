"""The SAT paper's own free-space geometry (System 4 as its code builds it, shared/REFERENCES.md):
a layer's signed weights as frames of tiles, misaligned as pictures, read back at fixed places.

Each output's weights are a side x side map zero-padded to a 32 x 30 tile (centred); 12
tiles make a frame of 3 rows x 4 columns, and every column is shown twice, so a frame is
96 x 240 display pixels. Misalignment moves each frame about its own centre (rotation,
shift along the rows in display pixels, i.e. weight rows, magnification), sampled
nearest-neighbour with zero fill; the read-back takes the even columns and each tile's
weights at their fixed place. The weights are signed and so are the inputs (normalised
digits): there is no reference tile and no light, only the arithmetic the reference's
code does. ``simulators.freespace.incoherent`` runs it behind the same instruments as the physical
bench, shown as levels (w + 1)/2 and read by a camera with a black level.
"""

from __future__ import annotations

import math

import torch
from satlab.simulators.freespace import optics

TILE = (32, 30)  # a tile's rows and columns before the columns are doubled
FRAME = (3, 4)  # tiles per frame: rows, columns
_CACHED = 256  # misalignments whose read-back map is kept (a sweep's points, a step's probes)


class TileFrameModel:
    """Tile sums of one layer in the reference's geometry: inputs (B, side²) and shown levels
    (outputs, side²) in [0, 1] (weights 2·level − 1) → (B, outputs)."""

    reference = False  # no reference tile: the camera's black level carries the sign

    def __init__(self, side: int, outputs: int, input_mean: float = 0.0, input_std: float = 1.0) -> None:
        if side > min(TILE):
            raise ValueError(f"a {side}x{side} weight map does not fit a {TILE[0]}x{TILE[1]} tile")
        self.side, self.outputs = side, outputs
        self.input_mean, self.input_std = input_mean, input_std
        self.top, self.left = (TILE[0] - side) // 2, (TILE[1] - side) // 2
        self._sources: dict[tuple[float, float, float], torch.Tensor] = {}
        # a frame's geometry: which pixel the read-back takes for each slot's weights, and which
        # slot's weight (slot·side² + pixel; -1: padding or outside) each pixel number + 1 shows
        rows, cols = FRAME[0] * TILE[0], FRAME[1] * TILE[1] * 2
        self._frame, self.slots = (rows, cols), FRAME[0] * FRAME[1]
        slot_row, slot_col = torch.arange(self.slots) // FRAME[1], torch.arange(self.slots) % FRAME[1]
        i, j = torch.arange(side).repeat_interleave(side), torch.arange(side).repeat(side)
        row = slot_row[:, None] * TILE[0] + self.top + i
        col = 2 * (slot_col[:, None] * TILE[1] + self.left + j)
        self._read_back = row * cols + col  # (slots, side²)
        r, c = torch.arange(rows).repeat_interleave(cols), torch.arange(cols).repeat(rows) // 2
        wi, wj = r % TILE[0] - self.top, c % TILE[1] - self.left
        inside = (wi >= 0) & (wi < side) & (wj >= 0) & (wj < side)
        slot = (r // TILE[0]) * FRAME[1] + c // TILE[1]
        shown = torch.where(inside, slot * side * side + wi * side + wj, -1)
        self._weight_at = torch.cat([torch.tensor([-1]), shown])

    def sources(self, rotation_deg: float, shift_px: float, scale: float) -> torch.Tensor:
        """For each weight the read-back finds (outputs, side²), the index of the shown weight it
        is (outputs·side² where it finds zero fill or padding). Every frame moves alike, so one
        frame of pixel numbers is resampled and the map shared; it is kept per misalignment."""
        key = (rotation_deg, shift_px, scale)
        if key not in self._sources:
            rows, cols = self._frame
            numbers = torch.arange(1, rows * cols + 1, dtype=torch.float32).reshape(1, rows, cols)
            seen = self.moved(numbers, rotation_deg, shift_px, scale).flatten()  # pixel + 1; 0 outside
            local = self._weight_at[seen[self._read_back].round().long()]  # (slots, side²), -1: none
            output = torch.arange(self.outputs)
            own = local[output % self.slots]  # in its frame, what each output's place shows
            index = (output[:, None] // self.slots) * self.slots * self.side**2 + own
            count = self.outputs * self.side**2
            index = torch.where((own >= 0) & (index < count), index, count)  # empty slots show nothing
            if len(self._sources) >= _CACHED:
                self._sources.pop(next(iter(self._sources)))
            self._sources[key] = index
        return self._sources[key]

    @staticmethod
    def moved(frames: torch.Tensor, rotation_deg: float, shift_px: float, scale: float) -> torch.Tensor:
        """Frames rotated, shifted down the rows and magnified by 1 + ``scale`` about each
        one's centre, nearest-neighbour (a fractional shift snaps to whole pixels)."""
        return optics.affine_resample(frames, math.radians(rotation_deg), (shift_px, 0.0), 1.0 + scale,
                                      mode="nearest")

    def tile_sums(self, x: torch.Tensor, shown: torch.Tensor,
                  misalignment: dict[str, float] | None = None) -> torch.Tensor:
        """sum_j w'_ij x̂_j (B, outputs): x̂ the normalised inputs, w' the weights 2·shown − 1 as the
        read-back finds them in the frames misaligned by named amounts (scale as a change from 1)."""
        weights = 2 * shown.reshape(self.outputs, -1) - 1
        m = misalignment or {}
        rotation, shift, scale = m.get("rotation_deg", 0.0), m.get("shift_px", 0.0), m.get("scale", 0.0)
        if rotation or shift or scale:
            source = self.sources(rotation, shift, scale).to(weights.device)
            weights = torch.cat([weights.flatten(), weights.new_zeros(1)])[source]
        inputs = (x.reshape(len(x), -1) - self.input_mean) / self.input_std
        return inputs @ weights.T
