"""The compiled CPU loops of the fused DRS (``models/drs_cpu.c``), built on first use.

On the CPU the DRS activation is bound by memory bandwidth: PyTorch's own ops make one pass over the
activation per op (relu, max, mean, the comparisons, the clip; more in the backward). The C file does the
forward in two passes (relu + max; clip + byte code; the gate's mean stays torch.mean, so that the output is
bit-identical to PyTorch's ops) and the backward in two (gradient sums; input gradient), parallel over the
N * C rows with OpenMP.

The library is compiled with the system's C compiler (``$CC``, else ``cc``/``gcc``) into a per-user cache
(``$DRS_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/drs-kernels`` or ``~/.cache/drs-kernels``), named by a hash of
the source and the flags, written under a temporary name and renamed, so concurrent processes (DDP ranks, two
runs) never load a half-written file. No compiler, a failed build or ``DRS_CPU_KERNEL=0`` leaves
``load()`` returning None and the fused PyTorch ops in use (one warning says why).
"""

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("drs_cpu.c")
FLAGS = ["-O3", "-fopenmp", "-shared", "-fPIC", "-std=c11"]
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_lock = threading.Lock()
_library = None
_tried = False


def cache_folder():
    if os.environ.get("DRS_KERNEL_CACHE"):
        return Path(os.environ["DRS_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "drs-kernels"


def _compiler():
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _build():
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC)")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join([compiler, *FLAGS]).encode()).hexdigest()[:16]
    target = cache_folder() / f"drs_cpu_{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(suffix=".so", prefix=".drs_cpu_", dir=target.parent)
        os.close(fd)
        try:
            result = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", temporary], capture_output=True,
                                    text=True)
            if result.returncode != 0:
                raise RuntimeError(f"{compiler} failed: {result.stderr.strip().splitlines()[-1:]}")
            os.replace(temporary, target)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    library = ctypes.CDLL(str(target))
    pointer, size, threads = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for suffix in _SUFFIX.values():
        getattr(library, f"drs_relu_max_{suffix}").argtypes = [pointer] * 3 + [size, size, threads]
        getattr(library, f"drs_clip_{suffix}").argtypes = [pointer] * 4 + [size, size, threads]
        getattr(library, f"drs_grad_stats_{suffix}").argtypes = [pointer] * 4 + [size, size, threads]
        getattr(library, f"drs_grad_input_{suffix}").argtypes = [pointer] * 5 + [size, size, threads]
    return library


def load():
    """The loaded library, or None when it cannot be used here (see the module's docstring)."""
    global _library, _tried
    if _tried:
        return _library
    with _lock:
        if not _tried:
            if os.environ.get("DRS_CPU_KERNEL", "1") != "0":
                try:
                    _library = _build()
                except (OSError, RuntimeError) as error:
                    warnings.warn(f"DRS: the compiled CPU kernel is unavailable ({error}); using PyTorch ops "
                                  "(slower on the CPU, same results)", stacklevel=2)
            _tried = True
    return _library


def usable(x):
    """Whether ``x`` (the activation) can go through the compiled loops."""
    return (x.device.type == "cpu" and x.dtype in _SUFFIX and x.dim() == 4 and x.is_contiguous()
            and load() is not None)


def _call(name, x, *tensors, planes, hw):
    function = getattr(_library, f"{name}_{_SUFFIX[x.dtype]}")
    pointers = [None if t is None else t.data_ptr() for t in tensors]
    function(*pointers, planes, hw, torch.get_num_threads())


def relu_max(x, out):
    """``out = relu(x)`` (``out`` may be ``x``); returns the per-row max, (N, C)."""
    n, c, h, w = x.shape
    peak = x.new_empty(n, c)
    _call("drs_relu_max", x, x, out, peak, planes=n * c, hw=h * w)
    return peak


def clip(r, threshold, peak, code=None):
    """``r = min(r, threshold)`` in place, filling ``code`` (uint8, r's shape) when given."""
    n, c, h, w = r.shape
    _call("drs_clip", r, r, threshold.contiguous(), peak.contiguous(), code, planes=n * c, hw=h * w)


def grad_stats(grad, code):
    """Per row: the gradient summed over the threshold-reaching positions (clipped twice, ties once) and the
    number of maxima, each (N, C)."""
    n, c, h, w = grad.shape
    reach, peaks = grad.new_empty(n, c), grad.new_empty(n, c)
    _call("drs_grad_stats", grad, grad, code, reach, peaks, planes=n * c, hw=h * w)
    return reach, peaks


def grad_input(grad, code, uniform, at_peak):
    """The gradient with respect to the activation's input (see ``drs_grad_input`` in the C file)."""
    n, c, h, w = grad.shape
    out = torch.empty_like(grad)
    uniform = None if uniform is None else uniform.contiguous()
    _call("drs_grad_input", grad, grad, code, uniform, at_peak.contiguous(), out, planes=n * c, hw=h * w)
    return out
