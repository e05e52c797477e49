"""File helpers: atomic writes, palette PNGs, JSON (lines)."""

import glob
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from utils.errors import DataError


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


_UMASK = os.umask(0)
os.umask(_UMASK)  # read once at import: os.umask can only be read by setting it


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove_orphans(path):
    """Delete the temporaries of ``path`` left by killed processes (``.<name>.<pid>.<random>.tmp``)."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _atomic_target(path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    return path, Path(tmp)


def atomic_write(path, write_fn):
    """Call ``write_fn(tmp_path)`` and move the result into place, so a crash never leaves a half file. The
    temporary is unique (concurrent writers never share one), named after its process (a killed writer's is
    removed by the next write of the same file), and the file gets the umask's mode like any new file."""
    path, tmp = _atomic_target(path)
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
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


PROVENANCE = "made_with.json"


def file_digest(path, algorithm="sha256"):
    """The digest of a file's bytes (hex): SHA-256 unless ``algorithm`` names another of hashlib's."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def claim_folder(folder, settings, what):
    """Record in ``folder/made_with.json`` the ``settings`` (JSON values) that the files in ``folder`` are made
    with, or check them against the record. The generation tools keep the files they find (an interrupted run
    resumes), so a folder made with another checkpoint or other options would silently mix the two; it is refused,
    and so is a folder that already holds files but no record."""
    folder = Path(folder)
    record = folder / PROVENANCE
    settings = json.loads(json.dumps(settings))  # tuples become lists, as they come back from the file
    if record.is_file():
        try:
            found = json.loads(record.read_text())
        except ValueError:
            found = {}
        if found != settings:
            keys = sorted(k for k in set(found) | set(settings) if found.get(k) != settings.get(k))
            raise DataError(f"{folder} holds {what} made with other settings ({', '.join(keys)} differ): "
                            "choose another --out, or delete the folder to start again")
        return record
    if folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir()):
        raise DataError(f"{folder} already holds files but no {PROVENANCE} saying what made them: choose another "
                        "--out, or delete the folder to start again")
    _, tmp = _atomic_target(record)
    try:
        tmp.write_text(json.dumps(settings, indent=1) + "\n")
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.link(tmp, record)  # fails if another run claimed the folder since the check: then compare with it
    except FileExistsError:
        return claim_folder(folder, settings, what)
    finally:
        tmp.unlink(missing_ok=True)
    return record
