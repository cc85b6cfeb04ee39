"""Finding an slmsuite hardware class from a rig file's ``model: module.Class``."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import re

from satlab.instruments import InstrumentFault
from satlab.validation import OptionError

PACKAGES = {"slm": "slmsuite.hardware.slms", "camera": "slmsuite.hardware.cameras"}


def check_model(kind: str, model: object) -> None:
    """OptionError unless ``model`` names a module of slmsuite's ``kind`` hardware, as module.Class."""
    if not isinstance(model, str):
        return  # an object built in Python (a notebook, a test) is taken as it is
    if not re.fullmatch(r"[a-z_][a-z0-9_]*\.[A-Za-z_]\w*", model):
        raise OptionError("model", f"expected module.Class of {PACKAGES[kind]}, e.g. "
                                   f"{'holoeye.Holoeye' if kind == 'slm' else 'thorlabs.ThorCam'}, got {model!r}")
    try:
        found = importlib.util.find_spec(f"{PACKAGES[kind]}.{model.split('.')[0]}")
    except ModuleNotFoundError:
        raise OptionError("model", "slmsuite is not installed: pip install 'satlab[slm]'") from None
    if found is None:
        raise OptionError("model", f"slmsuite has no {kind} module {model.split('.')[0]!r}")


def check_settings(model: object, settings: object) -> None:
    """OptionError unless ``settings`` is a mapping of the class's arguments."""
    if settings is not None and not isinstance(settings, dict):
        raise OptionError("settings", f"expected a mapping of {model}'s arguments, got {settings!r}")


def build(kind: str, model: object, settings: dict | None, name: str) -> object:
    """The slmsuite object: ``model`` built with ``settings``, or ``model`` itself if already built."""
    if not isinstance(model, str):
        return model
    module, cls = model.split(".")
    found = getattr(importlib.import_module(f"{PACKAGES[kind]}.{module}"), cls, None)
    if found is None:
        raise OptionError("model", f"{PACKAGES[kind]}.{module} has no class {cls!r}")
    try:
        return found(**(settings or {}))
    except Exception as exc:  # the vendor SDK's own errors: no device, wrong serial, ...
        raise InstrumentFault(name, f"{model}(...)", f"{type(exc).__name__}: {exc}") from None


def close_on_failure(device: object, opening) -> None:
    """Run ``opening``; if it fails, close ``device`` before the error goes on."""
    try:
        opening()
    except BaseException:
        with contextlib.suppress(Exception):  # the opening's error is the one to report
            device.close()
        raise
