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

import numpy as np

from satlab.instruments import InstrumentFault, PhaseModulator
from satlab.phase_lut import PhaseLut
from satlab.validation import OptionError, require_count


def _pyglet():
    try:
        import pyglet
    except ImportError:
        raise OptionError("driver", "display.slm needs pyglet: pip install 'satlab[slm]'") from None
    return pyglet


class DisplaySlm(PhaseModulator):
    """A phase SLM on monitor ``screen``, its shape the monitor's resolution."""

    @staticmethod
    def check_options(screen: int = 1, pixel_pitch_um: float = 8.0, bit_depth: int = 8,
                      lut_file: str | None = None, shape: list[int] | None = None,
                      fullscreen: bool = True) -> None:
        """Validate rig-file options before a window is opened."""
        require_count("screen", screen, 0, highest=15)
        require_count("bit_depth", bit_depth, 1, highest=8)  # a display carries 8 bits per colour
        if not (isinstance(pixel_pitch_um, (int, float)) and not isinstance(pixel_pitch_um, bool)
                and math.isfinite(pixel_pitch_um) and 0 < pixel_pitch_um <= 1000):
            raise OptionError("pixel_pitch_um", f"expected micrometres in (0, 1000], got {pixel_pitch_um!r}")
        try:
            PhaseLut.for_device(lut_file, bit_depth)
        except ValueError as exc:
            raise OptionError("lut_file", str(exc)) from None
        if shape is not None and not (isinstance(shape, list) and len(shape) == 2
                                      and all(isinstance(n, int) and 0 < n <= 16384 for n in shape)):
            raise OptionError("shape", f"expected [rows, cols] in pixels, got {shape!r}")
        if not isinstance(fullscreen, bool):
            raise OptionError("fullscreen", f"expected true or false, got {fullscreen!r}")
        if not fullscreen and shape is None:
            raise OptionError("shape", "a window that is not full screen needs its [rows, cols]")

    def __init__(self, screen: int = 1, pixel_pitch_um: float = 8.0, bit_depth: int = 8,
                 lut_file: str | None = None, shape: list[int] | None = None,
                 fullscreen: bool = True) -> None:
        """Open the window on ``screen`` and blank it."""
        self.check_options(screen, pixel_pitch_um, bit_depth, lut_file, shape, fullscreen)
        self.name = f"display SLM on monitor {screen}"
        self.lut, self.pixel_pitch_m = PhaseLut.for_device(lut_file, bit_depth), pixel_pitch_um * 1e-6
        pyglet = _pyglet()
        self._gl, self._image = pyglet.gl, pyglet.image
        try:
            found = pyglet.display.get_display().get_screens()
        except Exception as exc:  # no X server, no permission: pyglet's own exception types
            raise InstrumentFault(self.name, "(opening the display)", f"{type(exc).__name__}: {exc}") from None
        if screen >= len(found):
            raise OptionError("screen", f"monitor {screen} does not exist; this display has " + ", ".join(
                f"{i} ({s.width}x{s.height})" for i, s in enumerate(found)))
        monitor = found[screen]
        size = [monitor.height, monitor.width]
        if fullscreen and shape not in (None, size):  # scaling would smear levels across pixels
            raise OptionError("shape", f"monitor {screen} is {size[0]}x{size[1]} (rows x cols), "
                                       f"not {shape[0]}x{shape[1]}")
        if not fullscreen and (shape[0] > size[0] or shape[1] > size[1]):
            raise OptionError("shape", f"a {shape[0]}x{shape[1]} window does not fit monitor {screen} "
                                       f"({size[0]}x{size[1]})")
        self.shape = tuple(size if fullscreen else shape)
        self.window = None
        try:
            if fullscreen:
                self.window = pyglet.window.Window(screen=monitor, fullscreen=True, vsync=True,
                                                   caption="satlab SLM")
            else:
                self.window = pyglet.window.Window(width=shape[1], height=shape[0], screen=monitor,
                                                   style="borderless", vsync=True, caption="satlab SLM")
                self.window.set_location(monitor.x, monitor.y)  # pyglet opens it on the first monitor
            self.window.set_mouse_visible(False)
            self.blank()
        except BaseException as exc:
            if self.window is not None:
                self.window.close()
            if isinstance(exc, (InstrumentFault, OptionError)) or not isinstance(exc, Exception):
                raise
            raise InstrumentFault(self.name, "(opening the window)", f"{type(exc).__name__}: {exc}") from None

    def _write_gray(self, gray: np.ndarray) -> None:
        """Draw the gray levels one texel per pixel and flip them onto the monitor."""
        rows, cols = self.shape
        rgba = np.empty((rows, cols, 4), dtype=np.uint8)
        rgba[..., :3] = gray[::-1, :, None]  # OpenGL's first row is the bottom one
        rgba[..., 3] = 255
        gl = self._gl
        try:
            self.window.switch_to()
            self.window.dispatch_events()
            texture = self._image.ImageData(cols, rows, "RGBA", rgba.tobytes()).get_texture()
            gl.glBindTexture(texture.target, texture.id)
            gl.glTexParameteri(texture.target, gl.GL_TEXTURE_MIN_FILTER, gl.GL_NEAREST)
            gl.glTexParameteri(texture.target, gl.GL_TEXTURE_MAG_FILTER, gl.GL_NEAREST)
            self.window.clear()
            texture.blit(0, 0)
            self.window.flip()
            gl.glFinish()  # the mask is on the monitor when this returns, not queued
            texture.delete()
        except Exception as exc:  # GL and window-system errors
            raise InstrumentFault(self.name, "show", f"{type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        """Close the window."""
        self.window.close()
