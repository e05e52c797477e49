"""Checkpoints: our own format and the original (released) DRS formats (original §2.8, §2.9, §10).

Our format is a dict of plain Python types and tensors, loadable with ``torch.load(weights_only=True)``::

    {"format": "drs-reimpl-1", "kind": "classifier", "model": state_dict, "model_args": {...},
     "optimizer": ..., "epoch": int, "config": {...}, "metrics": {...}}

The released files are ``{"model", "optimizer", "epoch", "iter", "miou": numpy.float64}`` with every backbone
conv stored twice (``features.N.*`` and ``layerX_convY.*``) and the DRS gates under ``layerX_reluY.fc.0.weight``.
They are read with ``weights_only=True`` too: only numpy's scalar and dtype globals are allow-listed.
"""

import pickle
from pathlib import Path

import numpy as np
import torch

import models
from models.vgg import BLOCK_NAMES, CONV_INDICES
from utils.errors import UserError
from utils.io import atomic_write

FORMAT_TAG = "drs-reimpl-1"

_NUMPY_SCALAR_GLOBALS = [
    np._core.multiarray.scalar,
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),  # files pickled under numpy 1.x
    np.dtype,
    type(np.dtype(np.float64)),
]


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable or of the wrong kind; the message names the file."""


def load_file(path):
    """``torch.load`` with ``weights_only=True`` that also accepts the numpy scalars of the released files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted copy or download? fetch it again")
    try:
        with torch.serialization.safe_globals(_NUMPY_SCALAR_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # torch's weights-only unpickler met something else
        found = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line), "a Python object")
        raise CheckpointError(
            f"refused to read checkpoint {path}: it holds more than tensors and numbers ({found}); unpickling it "
            "could run code, so this project never does. Re-save its state dict from a trusted copy") from None
    except Exception as error:
        first = (str(error).strip().splitlines() or [""])[0]
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a PyTorch file?): "
                              f"{type(error).__name__} {first}") from None


def save(path, *, kind, model, model_args, optimizer=None, epoch=0, config=None, metrics=None, extra=None):
    """Write a checkpoint in our format, atomically (an interrupted save keeps the previous file)."""
    state = {
        "format": FORMAT_TAG,
        "kind": kind,
        "model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
        "model_args": dict(model_args),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": int(epoch),
        "config": config or {},
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
    }
    state.update(extra or {})
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def unwrap(model):
    """The bare module inside DDP / DataParallel wrappers."""
    return model.module if hasattr(model, "module") else model


def is_ours(checkpoint):
    return isinstance(checkpoint, dict) and checkpoint.get("format") == FORMAT_TAG


# --- the original VGG-16 key names -------------------------------------------------------------------------

def _relu_name(conv_name):
    return conv_name.replace("_conv", "_relu")


def released_vgg_to_ours(state, path="checkpoint"):
    """Map an original VGG state dict (classifier or refinement net) to our key names.

    ``features.N.*`` becomes ``backbone.features.N.*``; the ``layerX_convY.*`` aliases are dropped after
    checking that they hold the same values; ``layerX_reluY.fc.0.weight`` (DRS gates) becomes
    ``backbone.features.{N+1}.fc.0.weight``; ``extra_*`` keys keep their names.
    """
    ours = {}
    for index, alias in zip(CONV_INDICES, BLOCK_NAMES):
        for param in ("weight", "bias"):
            key = f"features.{index}.{param}"
            if key not in state:
                raise CheckpointError(f"{path}: key {key} missing; not an original DRS VGG-16 checkpoint")
            alias_key = f"{alias}.{param}"
            if alias_key in state and not torch.equal(state[alias_key], state[key]):
                raise CheckpointError(f"{path}: {alias_key} differs from {key}; the two names must share weights")
            ours[f"backbone.{key}"] = state[key]
        gate = f"{_relu_name(alias)}.fc.0.weight"
        if gate in state:
            ours[f"backbone.features.{index + 1}.fc.0.weight"] = state[gate]
    known = {f"features.{i}.{p}" for i in CONV_INDICES for p in ("weight", "bias")}
    known |= {f"{a}.{p}" for a in BLOCK_NAMES for p in ("weight", "bias")}
    known |= {f"{_relu_name(a)}.fc.0.weight" for a in BLOCK_NAMES}
    for key, value in state.items():
        if key not in known:
            ours[key] = value
    return ours


def ours_to_released_vgg(state):
    """The inverse of :func:`released_vgg_to_ours`: key names (and aliases) of the original code."""
    released = {}
    index_to_alias = dict(zip(CONV_INDICES, BLOCK_NAMES))
    for key, value in state.items():
        if key.startswith("backbone.features."):
            index, rest = key[len("backbone.features."):].split(".", 1)
            index = int(index)
            if rest == "fc.0.weight":
                released[f"{_relu_name(index_to_alias[index - 1])}.fc.0.weight"] = value
            else:
                released[f"features.{index}.{rest}"] = value
                released[f"{index_to_alias[index]}.{rest}"] = value
        else:
            released[key] = value
    return released


def load_released_vgg(path):
    """``(state_in_our_names, info)`` from an original DRS / refinement checkpoint file."""
    checkpoint = load_file(path)
    if is_ours(checkpoint):
        raise CheckpointError(f"{path} is in this project's format, not the original one")
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or "features.0.weight" not in state:
        raise CheckpointError(f"{path}: no 'model' state dict with features.0.weight; not an original DRS checkpoint")
    return released_vgg_to_ours(state, path), {k: checkpoint[k] for k in ("epoch", "iter", "miou") if k in checkpoint}


def vgg_width(state):
    """The width multiplier of a VGG state dict in our names (64 first-conv filters = 1.0)."""
    return state["backbone.features.0.weight"].shape[0] / 64.0


def load_classifier(path, delta=None, map_location="cpu"):
    """Build a :class:`DRSClassifier` from our checkpoint or an original one; returns ``(model, model_args)``.

    For an original checkpoint the DRS variant is read from the keys: gates present → learnable; no gates →
    a fixed-delta network, whose delta is not stored in the file and must be given.
    """
    ours = _ours(load_file(path), "classifier", path, "a stage-1 classifier")
    if ours:
        args, state = ours
        if delta is not None:
            args["drs"] = delta
    else:
        state, _ = load_released_vgg(path)
        has_gates = any(k.endswith(".fc.0.weight") for k in state)
        if "extra_conv4.weight" not in state:
            raise CheckpointError(f"{path}: no extra_conv4 (class conv); not a DRS classifier checkpoint")
        if has_gates:
            drs = "learnable"
        elif delta is not None:
            drs = float(delta)
        else:
            raise CheckpointError(
                f"{path} is a fixed-delta DRS checkpoint (no gate weights); its delta is not stored: pass --delta"
            )
        args = {"num_classes": state["extra_conv4.weight"].shape[0], "drs": drs, "width": vgg_width(state)}
    return _build("classifier", _no_download(args), state, path, map_location, "DRSClassifier")


def load_refiner(path, map_location="cpu"):
    """Build a :class:`RefineNet` from our checkpoint or an original ``Refine_DRS_learnable.pth``."""
    ours = _ours(load_file(path), "refine", path, "a stage-2 refinement network")
    if ours:
        args, state = ours
    else:
        state, _ = load_released_vgg(path)
        if any(k.endswith(".fc.0.weight") for k in state):
            raise CheckpointError(f"{path} is a DRS classifier checkpoint (it has DRS gates), not a refinement network")
        if "extra_conv4.weight" not in state:
            raise CheckpointError(f"{path}: no extra_conv4; not a refinement network checkpoint")
        args = {"num_classes": state["extra_conv4.weight"].shape[0], "width": vgg_width(state)}
    return _build("refine", _no_download(args), state, path, map_location, "RefineNet")


def _ours(checkpoint, kind, path, what):
    """``(model_args, state)`` of our checkpoint of ``kind``; None for a file in another format."""
    if not is_ours(checkpoint):
        version = checkpoint.get("format") if isinstance(checkpoint, dict) else None
        if isinstance(version, str) and version.startswith("drs-reimpl-"):
            raise CheckpointError(f"{path} was written in format {version} by another version of this project; this "
                                  f"one reads {FORMAT_TAG}: update the code (or re-save the checkpoint with it)")
        return None
    if checkpoint["kind"] != kind:
        raise CheckpointError(f"{path} holds a {checkpoint['kind']} network, not {what}")
    return dict(checkpoint["model_args"]), checkpoint["model"]


def _no_download(args):
    """VGG model args that never fetch ImageNet weights: the checkpoint overwrites them all."""
    args = {**args, "pretrained": False}
    args.pop("pretrained_path", None)
    return args


def _build(kind, args, state, path, map_location, name):
    """``models.build(kind, **args)`` loaded strictly from ``state``; a mismatch is one CheckpointError naming
    the keys."""
    try:
        model = models.build(kind, **args)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, KeyError) as error:
        lines = str(error).splitlines() or [type(error).__name__]  # a strict-load error: model, then keys
        detail = lines[1].strip() if len(lines) > 1 else lines[0]
        raise CheckpointError(f"{path} does not fit {name} {args}: {detail}") from None
    return model.to(map_location), args


# --- DeepLab-V2 ----------------------------------------------------------------------------------------------

def _resnet_blocks(state, prefix):
    """Blocks per stage (layer2..layer5) of a DeepLab-V2 state dict."""
    counts = []
    for layer in (2, 3, 4, 5):
        blocks = {k[len(prefix):].split(".")[1] for k in state if k.startswith(f"{prefix}layer{layer}.block")}
        counts.append(len(blocks))
    return counts


def load_deeplab_v2(path, map_location="cpu"):
    """Build the MSC DeepLab-V2 from our checkpoint or a released ``base.*`` state dict
    (``Deeplabv2_pseudo_segmentation_labels.pth``); returns ``(model, model_args)``."""
    checkpoint = load_file(path)
    ours = _ours(checkpoint, "deeplab_v2", path, "DeepLab-V2")
    if ours:
        args, state = ours
    else:
        state = checkpoint
        if not isinstance(state, dict) or "base.layer1.conv1.conv.weight" not in state:
            hint = " (a COCO init file? give it as MODEL.INIT_MODEL)" if "layer1.conv1.conv.weight" in state else ""
            raise CheckpointError(f"{path}: no base.layer1.conv1.conv.weight; not a DeepLab-V2 checkpoint{hint}")
        branches = sum(1 for k in state if k.startswith("base.aspp.c") and k.endswith(".weight"))
        rates = (6, 12, 18, 24)[:branches]  # dilation is not stored; the released model uses ASPP-L
        args = {"n_classes": state["base.aspp.c0.weight"].shape[0], "n_blocks": _resnet_blocks(state, "base."),
                "atrous_rates": rates, "width": state["base.layer1.conv1.conv.weight"].shape[0] / 64.0}
    return _build("deeplab_v2", args, state, path, map_location, "DeepLab-V2")


def load_coco_init(base, path):
    """Initialise a :class:`DeepLabV2` (the ``base`` of MSC) from ``deeplabv1_resnet101-coco.pth``: every
    ResNet key must be used; ``fc.*`` is ignored and ASPP keeps its N(0, 0.01) init (original §10(d))."""
    state = load_file(path)
    if not isinstance(state, dict) or "layer1.conv1.conv.weight" not in state:
        raise CheckpointError(f"{path}: no layer1.conv1.conv.weight; not a DeepLab COCO init file")
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = base.load_state_dict(backbone, strict=False)
    if unexpected or any(not k.startswith("aspp.") for k in missing):
        raise CheckpointError(f"{path} does not fit this ResNet: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return sorted(missing)


# --- DeepLab-V3+ ---------------------------------------------------------------------------------------------

_V3PLUS_CLASS_CONV = "classifier.classifier.3.weight"  # the last 1x1 conv: its out-channels are the classes


def _deeplab_v3plus_depth(state, path):
    """ResNet depth from the number of blocks in layer3 (6: ResNet-50, 23: ResNet-101)."""
    blocks = {k.split(".")[2] for k in state if k.startswith("backbone.layer3.")}
    depth = {6: 50, 23: 101}.get(len(blocks))
    if depth is None:
        raise CheckpointError(f"{path}: layer3 has {len(blocks)} blocks; expected 6 (ResNet-50) or 23 (ResNet-101)")
    return depth


def _released_v3plus_state(checkpoint, path):
    """The ``model_state`` of a released ``{'model_state': ...}`` file; a hint when it is another network's."""
    state = checkpoint.get("model_state") if isinstance(checkpoint, dict) else None
    if isinstance(state, dict) and _V3PLUS_CLASS_CONV in state:
        return state
    hint = ""
    if isinstance(checkpoint, dict) and any(str(k).startswith("base.") for k in checkpoint):
        hint = " (it looks like a DeepLab-V2 checkpoint: give it to DeepLab-V2-PyTorch/eval.py)"
    elif isinstance(checkpoint, dict) and "model" in checkpoint:
        hint = " (it looks like a DRS classifier or refinement checkpoint)"
    raise CheckpointError(f"{path}: no 'model_state' with {_V3PLUS_CLASS_CONV}; not a DeepLab-V3+ checkpoint{hint}")


def load_deeplab_v3plus(path, map_location="cpu", released_args=None):
    """Build :class:`DeepLabV3Plus` from our checkpoint (kind ``deeplab_v3plus``) or a released
    ``{'model_state': ...}`` file, loaded strictly; returns ``(model, model_args)``.

    A released file stores neither the output stride nor the conv type (they change no key), so they come from
    ``released_args`` (e.g. ``{"output_stride": 16, "separable": False}``, the defaults); classes and depth are
    read from the keys.
    """
    checkpoint = load_file(path)
    ours = _ours(checkpoint, "deeplab_v3plus", path, "DeepLab-V3+")
    if ours:
        args, state = ours
        if "width" in args:  # our files from before the argument was named stem_channels
            args["stem_channels"] = args.pop("width")
    else:
        state = _released_v3plus_state(checkpoint, path)
        args = {"num_classes": state[_V3PLUS_CLASS_CONV].shape[0], "depth": _deeplab_v3plus_depth(state, path),
                "output_stride": 16, "separable": False, **(released_args or {})}
    args.pop("weights", None)  # never download ImageNet weights: the checkpoint overwrites them all
    return _build("deeplab_v3plus", args, state, path, map_location, "DeepLab-V3+")
