"""A phase SLM driven as a computer display: a full-screen window on the SLM's monitor.

Most liquid-crystal SLMs (Holoeye, Meadowlark, Hamamatsu, Thorlabs Exulus, Santec) show
whatever the graphics card sends to them as a second monitor; the gray level of each
pixel sets its phase through the device's LUT. This driver opens a borderless
full-screen pyglet window on that monitor and draws each mask pixel for pixel: one
texel per device pixel, nearest filtering, no scaling. The gray level goes to all three
colour channels, which is what 8-bit SLMs read.

pyglet is pinned to 2.1.8 (the ``slm`` extra): slmsuite reports that 2.1.9 leaves the
display zeroed after phase data has been drawn. ``tests/test_display_slm.py`` takes a
real screenshot of the X server to prove the gray levels arrive.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from satlab.instruments import PhaseModulator
from satlab.phase_lut import PhaseLut
from satlab.validation import OptionError, require_count, require_seconds


def _pyglet():
    try:
        import pyglet
    except ImportError:
        raise OptionError("driver", "display.slm needs pyglet: pip install 'satlab[slm]'") from None
    return pyglet


def screens() -> list[tuple[int, int, int, int]]:
    """Every monitor of the display as (x, y, width, height)."""
    return [(s.x, s.y, s.width, s.height) for s in _pyglet().display.get_display().get_screens()]


class DisplaySlm(PhaseModulator):
    """A phase SLM on monitor ``screen``, its shape the monitor's resolution."""

    @staticmethod
    def check_options(screen: int = 1, pixel_pitch_um: float = 8.0, bit_depth: int = 8,
                      lut_file: str | None = None, settle_time_s: float = 0.05,
                      shape: list[int] | None = None, fullscreen: bool = True) -> None:
        """Validate rig-file options before a window is opened."""
        require_count("screen", screen, 0, highest=15)
        require_count("bit_depth", bit_depth, 1, highest=8)  # a display carries 8 bits per colour
        require_seconds("settle_time_s", settle_time_s, longest=10.0)
        if not (isinstance(pixel_pitch_um, (int, float)) and not isinstance(pixel_pitch_um, bool)
                and math.isfinite(pixel_pitch_um) and 0 < pixel_pitch_um <= 1000):
            raise OptionError("pixel_pitch_um", f"expected micrometres in (0, 1000], got {pixel_pitch_um!r}")
        if lut_file is not None and not Path(lut_file).is_file():
            raise OptionError("lut_file", f"no such file: {lut_file}")
        if shape is not None and not (isinstance(shape, list) and len(shape) == 2
                                      and all(isinstance(n, int) and 0 < n <= 16384 for n in shape)):
            raise OptionError("shape", f"expected [rows, cols] in pixels, got {shape!r}")
        if not isinstance(fullscreen, bool):
            raise OptionError("fullscreen", f"expected true or false, got {fullscreen!r}")
        if not fullscreen and shape is None:
            raise OptionError("shape", "a window that is not full screen needs its [rows, cols]")

    def __init__(self, screen: int = 1, pixel_pitch_um: float = 8.0, bit_depth: int = 8,
                 lut_file: str | None = None, settle_time_s: float = 0.05,
                 shape: list[int] | None = None, fullscreen: bool = True) -> None:
        """Open the window on ``screen`` and blank it."""
        self.check_options(screen, pixel_pitch_um, bit_depth, lut_file, settle_time_s, shape, fullscreen)
        pyglet = _pyglet()
        found = pyglet.display.get_display().get_screens()
        if screen >= len(found):
            raise OptionError("screen", f"monitor {screen} does not exist; this display has " + ", ".join(
                f"{i} ({s.width}x{s.height})" for i, s in enumerate(found)))
        monitor = found[screen]
        if fullscreen and shape is not None and shape != [monitor.height, monitor.width]:
            # scaling would smear gray levels across device pixels
            raise OptionError("shape", f"monitor {screen} is {monitor.height}x{monitor.width} "
                                       f"(rows x cols), not {shape[0]}x{shape[1]}")
        try:
            self.lut = PhaseLut.from_file(lut_file) if lut_file else PhaseLut.linear(bit_depth)
        except ValueError as exc:
            raise OptionError("lut_file", str(exc)) from None
        if self.lut.bits != bit_depth:
            raise OptionError("lut_file", f"{lut_file} has {2**self.lut.bits} levels, "
                                          f"bit_depth {bit_depth} needs {2**bit_depth}")
        self.pixel_pitch_m, self.settle_time_s = pixel_pitch_um * 1e-6, settle_time_s
        self.shape = (monitor.height, monitor.width) if fullscreen else tuple(shape)
        self.name = f"display SLM on monitor {screen}"
        if fullscreen:
            self.window = pyglet.window.Window(screen=monitor, fullscreen=True, vsync=True,
                                               caption="satlab SLM")
        else:
            self.window = pyglet.window.Window(width=self.shape[1], height=self.shape[0], screen=monitor,
                                               style="borderless", vsync=True, caption="satlab SLM")
        self.window.set_mouse_visible(False)
        self._gl = pyglet.gl
        self._image = pyglet.image
        self.blank()

    def identify(self) -> str:
        """Monitor, resolution and bit depth."""
        rows, cols = self.shape
        return f"{self.name}: {cols}x{rows}, {self.bit_depth}-bit, {self.pixel_pitch_m * 1e6:g} um pitch"

    def show_gray(self, gray: np.ndarray) -> None:
        """Draw the gray levels one texel per pixel and flip them onto the monitor."""
        gray = np.asarray(gray)
        if gray.shape != self.shape or gray.min(initial=0) < 0 or gray.max(initial=0) >= 2**self.bit_depth:
            raise ValueError(f"gray levels must have shape {self.shape} and lie in [0, {2**self.bit_depth})")
        rows, cols = self.shape
        rgba = np.empty((rows, cols, 4), dtype=np.uint8)
        rgba[..., :3] = gray[::-1, :, None]  # OpenGL's first row is the bottom one
        rgba[..., 3] = 255
        texture = self._image.ImageData(cols, rows, "RGBA", rgba.tobytes()).get_texture()
        gl = self._gl
        gl.glBindTexture(texture.target, texture.id)
        gl.glTexParameteri(texture.target, gl.GL_TEXTURE_MIN_FILTER, gl.GL_NEAREST)
        gl.glTexParameteri(texture.target, gl.GL_TEXTURE_MAG_FILTER, gl.GL_NEAREST)
        self.window.switch_to()
        self.window.dispatch_events()
        self.window.clear()
        texture.blit(0, 0)
        self.window.flip()
        gl.glFinish()  # the mask is on the monitor when this returns, not queued
        texture.delete()

    def close(self) -> None:
        """Close the window."""
        self.window.close()
