"""Segmentation metrics on a 21x21 confusion matrix (original §6, parity fixture G).

``hist[gt, pred]`` accumulates pixels whose GT is a class (0..20); GT 255 is ignored. Two means exist in the
original code and both are reported:

* ``mean_iou`` -- the DRS ``IOUMetric``: nanmean of IoU over all classes, so a class predicted but absent from
  the GT scores 0 and counts; a class absent from both is NaN and skipped.
* ``mean_iou_gt_classes`` -- DeepLab-V2's ``scores``: nanmean over the classes present in the GT.
"""

import numpy as np

from utils.voc import SEG_CLASS_NAMES


class ConfusionMatrix:
    def __init__(self, num_classes=21):
        self.num_classes = num_classes
        self.hist = np.zeros((num_classes, num_classes), dtype=np.int64)
        # per GT class: pixels whose prediction is no class (e.g. 255 = ignore in a pseudo label)
        self.unassigned = np.zeros(num_classes, dtype=np.int64)

    def update(self, gt, pred):
        """Add one label map pair (any integer dtype; values outside 0..n-1 in ``gt`` are ignored)."""
        gt = np.asarray(gt).astype(np.int64).ravel()
        pred = np.asarray(pred).astype(np.int64).ravel()
        if gt.shape != pred.shape:
            raise ValueError(f"GT and prediction differ in size: {gt.shape} vs {pred.shape}")
        valid = (gt >= 0) & (gt < self.num_classes)
        n = self.num_classes
        # predictions outside 0..n-1 (e.g. 255 "ignore" in a pseudo label) must not alias into another cell
        pred_ok = valid & (pred >= 0) & (pred < n)
        self.hist += np.bincount(n * gt[pred_ok] + pred[pred_ok], minlength=n * n).reshape(n, n)
        self.unassigned += np.bincount(gt[valid & ~pred_ok], minlength=n)
        return self

    def reduce(self, runtime):
        """Sum this matrix over the processes of ``runtime`` (a :class:`utils.distributed.Runtime`), in place."""
        self.hist, self.unassigned = runtime.sum(self.hist), runtime.sum(self.unassigned)
        return self

    def merge(self, other):
        self.hist += other.hist
        self.unassigned += other.unassigned
        return self

    def scores(self, unassigned_as_wrong=False):
        """Scores with unassigned predictions left out (default) or counted as wrong (they then enlarge
        each GT class's pixel count, lowering its IoU and accuracy)."""
        hist = self.hist.astype(np.float64)
        diag = np.diag(hist)
        gt_count = hist.sum(axis=1) + (self.unassigned if unassigned_as_wrong else 0)
        pred_count = hist.sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = diag / (gt_count + pred_count - diag)
            class_acc = diag / gt_count
            total = hist.sum()
            freq = gt_count / total
            pixel_acc = diag.sum() / total
        present = gt_count > 0
        return {
            "pixel_accuracy": float(pixel_acc),
            "mean_accuracy": float(np.nanmean(class_acc)),
            "frequency_weighted_iou": float((freq[freq > 0] * iou[freq > 0]).sum()),
            "mean_iou": float(np.nanmean(iou)),
            "mean_iou_gt_classes": float(np.nanmean(iou[present])) if present.any() else float("nan"),
            "class_iou": {str(i): (None if np.isnan(v) else float(v)) for i, v in enumerate(iou)},
        }


def markdown_table(results, names=SEG_CLASS_NAMES, digits=1):
    """A markdown table with one column per result and one row per class, plus the mean rows.

    ``results``: ``{column title: scores dict}`` (as returned by :meth:`ConfusionMatrix.scores`), in %.
    """
    titles = list(results)
    lines = ["| class | " + " | ".join(titles) + " |", "|---|" + "---|" * len(titles)]

    def cell(value):
        return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{100 * value:.{digits}f}"

    for index, name in enumerate(names):
        lines.append(f"| {name} | " + " | ".join(cell(results[t]["class_iou"].get(str(index))) for t in titles) + " |")
    lines.append("| **mIoU** | " + " | ".join(f"**{cell(results[t]['mean_iou'])}**" for t in titles) + " |")
    return "\n".join(lines) + "\n"
