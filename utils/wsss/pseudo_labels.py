"""Pseudo segmentation labels from refined maps and saliency (original §5)."""

import torch

from utils.voc import IGNORE_LABEL


def pseudo_label(maps, salient, alpha=0.2, conflict_score=0.9, max_conflicts=2):
    """The original's label rule for one image. ``maps``: (C, H, W) refined scores; ``salient``: (H, W) bool.

    Scores below ``alpha`` are dropped; the background score is 1 where not salient, 0 where salient; the label
    is the argmax (ties to the lower index, i.e. background). Ignored (255): pixels where more than
    ``max_conflicts`` of the 21 scores exceed ``conflict_score``, and salient pixels left as background.
    """
    maps = torch.as_tensor(maps, dtype=torch.float32)
    salient = torch.as_tensor(salient, dtype=torch.bool, device=maps.device)
    scores = torch.cat([(~salient).to(maps.dtype)[None], torch.where(maps < alpha, 0.0, maps)])
    label = scores.argmax(dim=0)
    label[(scores > conflict_score).sum(dim=0) > max_conflicts] = IGNORE_LABEL
    label[salient & (label == 0)] = IGNORE_LABEL
    return label.to(torch.uint8)


def threshold_label(maps, background_threshold):
    """Saliency-free labels: the best class where its score exceeds ``background_threshold``, else background."""
    maps = torch.as_tensor(maps, dtype=torch.float32)
    peak, best = maps.max(dim=0)
    return torch.where(peak > background_threshold, best + 1, torch.zeros_like(best)).to(torch.uint8)


def top_class_target(maps):
    """Stage 2's regression target (original §4.2): each pixel keeps only the channel(s) equal to its
    maximum over classes (ties keep every tied channel); all others become 0. ``maps``: (..., C, H, W)."""
    return maps * (maps == maps.amax(dim=-3, keepdim=True))
