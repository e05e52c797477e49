"""Stages 1-3 of weakly-supervised segmentation: CAMs, transforms, epoch training, evaluation, pseudo labels."""
