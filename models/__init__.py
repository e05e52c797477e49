"""Network definitions: plain ``nn.Module`` classes with explicit constructor arguments, and one registry.

``build(kind, **args)`` makes any of the project's networks from a checkpoint's ``kind`` and ``model_args``;
the kinds are the checkpoint kinds of :mod:`utils.checkpoints`.
"""


def _factories():
    # imported on first use: ``import models`` stays cheap and free of cycles
    from models.classifier import DRSClassifier
    from models.deeplab_v2 import deeplab_v2_msc
    from models.deeplab_v3plus import DeepLabV3Plus
    from models.refine import RefineNet

    return {"classifier": DRSClassifier, "refine": RefineNet, "deeplab_v2": deeplab_v2_msc,
            "deeplab_v3plus": DeepLabV3Plus}


KINDS = ("classifier", "refine", "deeplab_v2", "deeplab_v3plus")


def build(kind, **args):
    """The network of ``kind`` (stage-1 classifier, stage-2 refinement net, DeepLab-V2 MSC, DeepLab-V3+)."""
    factories = _factories()
    if kind not in factories:
        raise ValueError(f"unknown model kind {kind!r} (one of {', '.join(KINDS)})")
    return factories[kind](**args)
