"""Dense CRF (pydensecrf2, imported as ``pydensecrf``) and a process pool to run it over many images.

The DeepLab evaluation parameters (original §7.6) are the defaults: 10 mean-field iterations, a Gaussian
kernel (sxy 1, compat 3) and a bilateral kernel (sxy 67, srgb 3, compat 4).
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CRFParams:
    iterations: int = 10
    pos_xy_std: float = 1.0
    pos_w: float = 3.0
    bi_xy_std: float = 67.0
    bi_rgb_std: float = 3.0
    bi_w: float = 4.0


def _model(image, unary, params):
    import pydensecrf.densecrf as dcrf

    n_labels, height, width = unary.shape[0], image.shape[0], image.shape[1]
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary.reshape(n_labels, -1), dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.pos_xy_std, compat=params.pos_w)
    writable = np.array(image, dtype=np.uint8, order="C")  # pydensecrf refuses read-only buffers
    crf.addPairwiseBilateral(sxy=params.bi_xy_std, srgb=params.bi_rgb_std, rgbim=writable, compat=params.bi_w)
    return crf


def crf_probabilities(image, probabilities, params=CRFParams()):
    """Refine (C, H, W) class probabilities with the uint8 (H, W, 3) ``image``; returns (C, H, W) float32."""
    from pydensecrf.utils import unary_from_softmax

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[:2] != probabilities.shape[1:]:
        raise ValueError(f"CRF needs a uint8 (H, W, 3) image matching the maps, got {image.dtype} {image.shape} "
                         f"for maps {probabilities.shape}")
    crf = _model(image, unary_from_softmax(probabilities.astype(np.float32)), params)
    q = crf.inference(params.iterations)
    return np.array(q, dtype=np.float32).reshape(probabilities.shape)


def crf_from_labels(image, label, n_classes=21, confidence=0.7, ignore=255, params=CRFParams()):
    """Refine a hard label map: each labelled pixel gets probability ``confidence`` for its class, ignored
    pixels are uniform (unsure); returns the CRF's argmax as uint8."""
    from pydensecrf.utils import unary_from_labels

    shifted = np.where(label == ignore, 0, label.astype(np.int64) + 1)  # 0 = unsure for pydensecrf
    unary = unary_from_labels(shifted, n_classes, gt_prob=confidence, zero_unsure=True)
    crf = _model(image, unary.reshape(n_classes, *label.shape), params)
    return np.argmax(np.array(crf.inference(params.iterations)), axis=0).reshape(label.shape).astype(np.uint8)


def run_parallel(function, jobs, processes=None, desc="dense CRF"):
    """``[function(*job) for job in jobs]`` over CPU processes, with a progress bar, results in order."""
    import multiprocessing as mp
    import os

    from utils.io import progress

    processes = processes or os.cpu_count() or 1
    jobs = list(jobs)
    if processes <= 1 or len(jobs) <= 1:
        return [function(*job) for job in progress(jobs, desc=desc)]
    with mp.get_context("spawn").Pool(processes) as pool:
        return list(progress(pool.imap(_call, [(function, job) for job in jobs]), total=len(jobs), desc=desc))


def _call(item):
    function, job = item
    return function(*job)
