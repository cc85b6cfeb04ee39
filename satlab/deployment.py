"""Trained weights as a portable file, and their deployment onto a rig through weight maps.

Every trained method writes ``weights.pt``: each physical layer's weights (out, in), as
its twin says they are at the trained controls, and the digital layers' state. Another
rig (another chip, a calibrated one) takes them through its own weight ↔ control map:
``model.init_from`` starts training there, ``methods: [weights]`` evaluates them as they
are.
"""

from __future__ import annotations

from pathlib import Path

import torch

from satlab.config import ModelConfig
from satlab.validation import ConfigError

WEIGHTS_FILE = "weights.pt"
# the model settings that shape the digital layers: weights move only between equal ones
DIGITAL_SHAPE = ("front", "conv_channels", "physical", "activation")


def export_weights(model: torch.nn.Module, path: Path) -> None:
    """Write the physical layers' weights and the digital state of a trained HybridNet."""
    layers = {}
    for layer in model.physical:
        w = layer.backend.weights_of(layer.controls)
        if w is not None:
            layers[layer.backend.name] = w
    if not layers:
        return  # a system without weights (masks, phases) deploys its controls as they are
    digital = {k: v for k, v in model.state_dict().items() if not k.startswith("physical.")}
    shape = {k: getattr(model.cfg, k) for k in DIGITAL_SHAPE}
    torch.save({"satlab_weights": 1, "layers": layers, "digital": digital, "model": shape}, path)


def find_weights(source: Path) -> Path:
    """The weights.pt of a method folder, a run folder (sat first) or the file itself."""
    if source.is_file():
        return source
    candidates = [source / WEIGHTS_FILE, source / "sat" / WEIGHTS_FILE, source / "plain" / WEIGHTS_FILE]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(source)


def load_weights(source: Path, config_path: Path, model: ModelConfig,
                 layer_shapes: list[tuple[str, int, int]]) -> dict:
    """Weights to deploy, checked against the config's model and the rig's layers before
    anything opens; ConfigError names the problem."""
    field = "model.init_from"
    try:
        path = find_weights(Path(source))
    except FileNotFoundError:
        raise ConfigError(config_path, field, f"no {WEIGHTS_FILE} at {source} (a run folder, a method "
                          f"folder or a weights file, written by satlab train)") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not torch, foreign objects: all unusable the same way
        raise ConfigError(config_path, field, f"{path}: unreadable weights ({type(exc).__name__})") from None
    if not (isinstance(data, dict) and data.get("satlab_weights") == 1 and isinstance(data.get("layers"), dict)):
        raise ConfigError(config_path, field, f"{path}: not a satlab weights file")
    for key in DIGITAL_SHAPE:
        theirs, ours = data.get("model", {}).get(key), getattr(model, key)
        if theirs != ours:
            raise ConfigError(config_path, f"model.{key}", f"{ours!r}, but {path} was trained with "
                              f"{theirs!r}: its digital layers would not fit")
    for name, n_in, n_out in layer_shapes:
        w = data["layers"].get(name)
        if not isinstance(w, torch.Tensor) or tuple(w.shape) != (n_out, n_in):
            got = tuple(w.shape) if isinstance(w, torch.Tensor) else "none"
            raise ConfigError(config_path, field, f"{path}: layer {name} needs weights of shape "
                              f"({n_out}, {n_in}), the file has {got}")
        if not torch.isfinite(w).all():
            raise ConfigError(config_path, field, f"{path}: layer {name}'s weights are not finite")
    data["path"] = path
    return data


def deploy(model: torch.nn.Module, weights: dict) -> None:
    """Set every physical layer's controls to show the weights, load the digital state."""
    try:
        result = model.load_state_dict(weights["digital"], strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("physical.")]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")
    except RuntimeError as exc:
        raise ConfigError(weights["path"], "digital", "the digital layers do not fit this config's "
                          f"model ({str(exc).splitlines()[0]})") from None
    for layer in model.physical:
        controls = layer.backend.controls_for_weights(weights["layers"][layer.backend.name])
        with torch.no_grad():
            layer.controls.copy_(controls)
        layer.project()
