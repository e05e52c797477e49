"""File helpers: atomic writes, palette PNGs, JSON (lines)."""

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def voc_palette():
    """The 768-entry PASCAL VOC palette: the standard colours for 0..20, grey (i, i, i) above (255 = white)."""
    palette = []
    for index in range(256):
        if index <= 20:
            r = g = b = 0
            c = index
            for shift in range(7, -1, -1):
                r |= ((c >> 0) & 1) << shift
                g |= ((c >> 1) & 1) << shift
                b |= ((c >> 2) & 1) << shift
                c >>= 3
            palette += [r, g, b]
        else:
            palette += [index, index, index]
    return palette


def _atomic_target(path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return path, Path(tmp)


def atomic_write(path, write_fn):
    """Call ``write_fn(tmp_path)`` and move the result into place, so a crash never leaves a half file."""
    path, tmp = _atomic_target(path)
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def save_label_png(path, label):
    """Write a uint8 label map (0..20, 255) as a palette PNG with the VOC colours."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label map for {path} must be 2-D, got shape {label.shape}")
    image = Image.fromarray(label.astype(np.uint8), mode="P")
    image.putpalette(voc_palette())
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def save_npy(path, array):
    def write(tmp):
        with open(tmp, "wb") as handle:
            np.save(handle, array)

    return atomic_write(path, write)


def save_json(path, obj):
    def write(tmp):
        with open(tmp, "w") as handle:
            json.dump(obj, handle, indent=1, allow_nan=True)
            handle.write("\n")

    return atomic_write(path, write)


def append_jsonl(path, record):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def progress(iterable=None, quiet=False, **kwargs):
    """A tqdm bar on interactive terminals; nothing when output goes to a file or pipe (or ``quiet``)."""
    from tqdm import tqdm

    return tqdm(iterable, disable=True if quiet else None, dynamic_ncols=True, **kwargs)
