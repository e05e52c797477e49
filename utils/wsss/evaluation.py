"""Evaluation of classifiers and localization maps (original §2.8, §3.3; DRS protocol and CAM protocol)."""

import numpy as np
import torch
import torch.nn.functional as F

from utils.metrics import ConfusionMatrix
from utils.voc import IGNORE_LABEL, SALIENCY_THRESHOLD
from utils.wsss.cam import cam_pseudo_label, normalized_cam

# 0.00 .. 0.95: VOC maps peak near 0.2-0.3, but blurry maps (the demo's) can need far higher ones, and a best
# threshold at the end of the sweep would not be the best.
CAM_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(20))


def average_precision(scores, targets):
    """Per-class average precision (mean of precision at each positive's rank) and their mean over classes
    that have positives. ``scores``, ``targets``: (N, C)."""
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets) > 0.5
    per_class = []
    for c in range(scores.shape[1]):
        if not targets[:, c].any():
            per_class.append(float("nan"))
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        hits = targets[order, c]
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        per_class.append(float(precision[hits].mean()))
    return per_class, float(np.nanmean(per_class))


@torch.no_grad()
def validate_classifier(model, loader, device, alpha=0.2, runtime=None):
    """Per-epoch validation of stage 1 (original §2.8): loss, exact-match accuracy and the mIoU of the
    CAM pseudo labels (alpha, saliency background) against the GT, all at the test size. Under torchrun each
    process scores its share of the images (``loader``) and the sums are reduced over ``runtime``."""
    model.eval()
    matrix = ConfusionMatrix()
    loss_sum, exact, count = 0.0, 0, 0
    pictures = {}
    for batch in loader:
        images, classes = batch["image"].to(device), batch["classes"].to(device)
        maps = model.class_maps(images)
        logits = maps.mean(dim=(2, 3))
        loss_sum += F.multilabel_soft_margin_loss(logits, classes, reduction="sum").item()
        exact += int(((torch.sigmoid(logits) >= 0.5) == (classes > 0.5)).all(dim=1).sum())
        count += len(images)
        cams = normalized_cam(maps, classes, images.shape[-2:])
        pictures = pictures or heat_pictures(images, cams)
        background = 1.0 - (batch["saliency"].to(device) > SALIENCY_THRESHOLD).float()
        preds = cam_pseudo_label(cams, background, alpha).cpu().numpy()
        for gt, pred in zip(batch["label"].numpy(), preds):
            matrix.update(gt, pred)
    loss_sum, exact, count = _reduce(matrix, [loss_sum, exact, count], runtime)
    return {"loss": loss_sum / max(count, 1), "accuracy": exact / max(count, 1), "miou": matrix.scores()["mean_iou"],
            "pictures": pictures}


def heat_pictures(images, maps, count=4):
    """The first ``count`` images of a batch (ImageNet-normalised) with the max over classes of their
    (B, C, H, W) maps in [0, 1] as a heat map: the pictures a validation hands to TensorBoard."""
    from utils.reports.pictures import heat_overlay
    from utils.wsss.transforms import IMAGENET_MEAN, IMAGENET_STD

    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    rgb = ((images[:count].float().cpu() * std + mean).clamp(0, 1) * 255).byte().permute(0, 2, 3, 1).numpy()
    heat = maps[:count].float().amax(dim=1).cpu().numpy()
    return {f"maps/{i}": heat_overlay(image, h) for i, (image, h) in enumerate(zip(rgb, heat))}


def _reduce(matrix, sums, runtime):
    """Sum ``matrix`` (in place) and the numbers ``sums`` over the processes."""
    if runtime is None:
        return sums
    matrix.reduce(runtime)
    return runtime.sum(np.array(sums, dtype=np.float64)).tolist()


class MapEvaluator:
    """Scores (20, H, W) localization maps in [0, 1] against GT label maps of the same size.

    * DRS protocol: maps < alpha dropped, background = 1 - binarised saliency, argmax.
    * CAM protocol: no saliency; background = a fixed threshold t, swept over ``thresholds``.
    * Optional part masks (0 background, 1 body, 2 part; the demo dataset has them): mean map value of the
      image's own classes on each region, the share of each region's pixels whose best own-class map is below
      alpha, and the share the DRS protocol labels right.
    """

    def __init__(self, alpha=0.2, thresholds=CAM_THRESHOLDS):
        self.alpha = alpha
        self.thresholds = tuple(thresholds)
        self.drs = ConfusionMatrix()
        self.cam = {t: ConfusionMatrix() for t in self.thresholds}
        self.region_sum = np.zeros(3)
        self.region_count = np.zeros(3)
        self.region_pixels = np.zeros(3)  # GT-labelled pixels per region (ignore label left out)
        self.region_below_alpha = np.zeros(3)  # ... where the best own-class map is below alpha
        self.region_correct = np.zeros(3)  # ... labelled right by the DRS protocol

    def add(self, maps, classes, gt, saliency=None, parts=None):
        maps = torch.as_tensor(maps, dtype=torch.float32)[None]
        drs_label = None
        if saliency is not None:
            background = 1.0 - (torch.as_tensor(np.asarray(saliency)) > SALIENCY_THRESHOLD).float()
            drs_label = cam_pseudo_label(maps, background[None], self.alpha)[0].numpy()
            self.drs.update(gt, drs_label)
        peak = maps[0].max(dim=0).values  # the best class score at each pixel
        fg = maps[0].argmax(dim=0) + 1
        for t in self.thresholds:
            self.cam[t].update(gt, torch.where(peak > t, fg, torch.zeros_like(fg)).numpy())
        if parts is not None:
            present = np.flatnonzero(np.asarray(classes) > 0.5)
            if len(present):
                own = maps[0, present].numpy()  # (k, H, W): the image's classes
                own_below_alpha = own.max(axis=0) < self.alpha
                parts, gt = np.asarray(parts), np.asarray(gt)
                for region in range(3):
                    mask = parts == region
                    self.region_sum[region] += own[:, mask].sum()
                    self.region_count[region] += mask.sum() * len(present)
                    labelled = mask & (gt != IGNORE_LABEL)
                    self.region_pixels[region] += labelled.sum()
                    self.region_below_alpha[region] += own_below_alpha[labelled].sum()
                    if drs_label is not None:
                        self.region_correct[region] += (drs_label[labelled] == gt[labelled]).sum()

    def results(self):
        out = {}
        if self.drs.hist.sum():
            out["drs_protocol"] = self.drs.scores()
        sweep = {f"{t:.2f}": self.cam[t].scores()["mean_iou"] for t in self.thresholds}
        best = max(sweep, key=sweep.get)
        out["cam_protocol"] = {"best_threshold": float(best), "sweep": sweep, **self.cam[float(best)].scores()}
        if self.region_count.any():
            means = self.region_sum / np.maximum(self.region_count, 1)
            out["regions"] = {"background": means[0], "body": means[1], "part": means[2],
                              "body_part_ratio": means[1] / max(means[2], 1e-12)}
            pixels = np.maximum(self.region_pixels, 1)
            names = ("background", "body", "part")
            # Where each region's pixels fall short: own-class map below alpha, and the DRS protocol's accuracy.
            out["regions"]["below_alpha"] = dict(zip(names, (self.region_below_alpha / pixels).tolist()))
            if self.drs.hist.sum():
                out["regions"]["drs_correct"] = dict(zip(names, (self.region_correct / pixels).tolist()))
        return out


@torch.no_grad()
def validate_refiner(model, loader, device, alpha=0.2, runtime=None):
    """Per-epoch validation of stage 2 (original §4.4): MSE of the label-masked output against the
    top-class target, and the mIoU of single-scale pseudo labels (alpha, saliency background); reduced over
    ``runtime``'s processes as :func:`validate_classifier`."""
    from utils.wsss.pseudo_labels import top_class_target

    model.eval()
    matrix = ConfusionMatrix()
    loss_sum, count = 0.0, 0
    pictures = {}
    for batch in loader:
        images, classes = batch["image"].to(device), batch["classes"].to(device)
        refined = model(images, classes=classes)
        pictures = pictures or heat_pictures(images, refined)
        loss_sum += F.mse_loss(refined, top_class_target(batch["maps"].to(device))).item() * len(images)
        count += len(images)
        background = 1.0 - (batch["saliency"].to(device) > SALIENCY_THRESHOLD).float()
        preds = cam_pseudo_label(refined, background, alpha).cpu().numpy()
        for gt, pred in zip(batch["label"].numpy(), preds):
            matrix.update(gt, pred)
    loss_sum, count = _reduce(matrix, [loss_sum, count], runtime)
    return {"loss": loss_sum / max(count, 1), "miou": matrix.scores()["mean_iou"], "pictures": pictures}
