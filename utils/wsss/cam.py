"""Class activation maps and localization maps of the stage-1 classifier (original §2.8, §3)."""

import torch
import torch.nn.functional as F

LOCALIZATION_SCALES = (256, 320, 384)
LOCALIZATION_SIZE = 320
PRECISIONS = ("fp32", "bf16")


def add_generation_options(parser):
    """The options the generation tools share: batch size, loader workers and precision."""
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per forward pass (default: 8 on CUDA, 1 on the CPU)")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="bf16: convolutions under bfloat16 autocast, ~3x faster, maps differ slightly")


def with_precision(made_with, precision):
    """``made_with`` (a tool's recorded settings) with the precision, recorded only when not the default so that
    folders written before the option existed stay valid."""
    return made_with if precision == "fp32" else {**made_with, "precision": precision}


def generation_batch_size(requested, device):
    """``--batch-size`` of the generation tools: as given, else 8 on CUDA and 1 on the CPU (where a larger batch
    is slower: its large fresh tensors cost page faults, measured in docs/performance.md)."""
    return requested or (8 if device.type == "cuda" else 1)


def score_function(model, method, precision="fp32"):
    """``model.<method>`` as a function of images. ``fp32``: as is (the parity-exact path). ``bf16``: under
    bfloat16 autocast with the model and the images in channels-last memory, the output back in float32: the
    convolutions run in bfloat16 (AMX on recent Intel CPUs, tensor cores on GPUs), about 3x faster on this
    project's CPU, with maps that differ slightly (docs/performance.md measures how much)."""
    score = getattr(model, method)
    if precision == "fp32":
        return score
    if precision != "bf16":
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    model.to(memory_format=torch.channels_last)

    def scored(images):
        with torch.autocast(images.device.type, dtype=torch.bfloat16):
            return score(images.contiguous(memory_format=torch.channels_last)).float()

    return scored


def normalized_cam(class_maps, classes, size):
    """ReLU, bilinear (align_corners=True) to ``size``, divide each channel by its max + 1e-5, keep the
    image's classes only. ``class_maps``: (B, C, h, w); ``classes``: (B, C) multi-hot."""
    cam = F.interpolate(torch.relu(class_maps), size=size, mode="bilinear", align_corners=True)
    cam = cam / (cam.amax(dim=(2, 3), keepdim=True) + 1e-5)
    return cam * classes[:, :, None, None]


@torch.no_grad()
def multiscale_maps(score_fn, images, classes, sizes, scales=LOCALIZATION_SCALES, normalize=False):
    """Per image, the element-wise max over scales (from 0, so maps are >= 0) of ``score_fn`` at each
    s x s input, upsampled (bilinear, align_corners=True) to that image's own size and masked by its classes.

    ``score_fn``: images -> (B, C, h, w) raw maps (the refinement net's ``score_maps``, or a classifier's
    ``class_maps`` with ``normalize=True`` for ReLU + per-channel max-normalisation, i.e. its CAM).
    ``sizes``: one (H, W) per image, so a batch may mix image sizes. Returns a list of (C, H, W) tensors.
    """
    # Only the image's classes are upsampled (the others are masked to 0 anyway; channels are independent, so
    # the values are the same): an image has one to three of the 20 classes.
    present = [torch.nonzero(row).flatten() for row in classes]
    combined = [torch.zeros(len(keep), *size, device=images.device) for keep, size in zip(present, sizes)]
    for scale in scales:
        raw = score_fn(F.interpolate(images, size=(scale, scale), mode="bilinear", align_corners=False))
        if normalize:
            raw = torch.relu(raw)
        for index, (keep, size) in enumerate(zip(present, sizes)):
            if len(keep) == 0:
                continue
            maps = F.interpolate(raw[index:index + 1, keep], size=tuple(size), mode="bilinear", align_corners=True)[0]
            if normalize:
                maps = maps / (maps.amax(dim=(1, 2), keepdim=True) + 1e-5)
            torch.maximum(combined[index], maps * classes[index, keep, None, None], out=combined[index])
    result = []
    for keep, maps, size in zip(present, combined, sizes):
        full = torch.zeros(classes.shape[1], *size, device=images.device)
        full[keep] = maps
        result.append(full)
    return result


@torch.no_grad()
def multiscale_cam(model, images, classes, scales=LOCALIZATION_SCALES, size=None, precision="fp32"):
    """Element-wise max over scales of the CAMs of ``images`` resized to each s x s, all brought to ``size``
    (default: the input's H, W). No flip, as the original."""
    size = tuple(size or images.shape[-2:])
    return torch.stack(multiscale_maps(score_function(model, "class_maps", precision), images, classes,
                                       [size] * len(images), scales, normalize=True))


def quantize_maps(maps):
    """The stored form: uint8 of maps x 255, truncated as ``np.uint8`` does."""
    return (maps * 255).clamp(0, 255).to(torch.uint8)


def write_localization_maps(model, loader, out_dir, device, scales=LOCALIZATION_SCALES, show_progress=True,
                            precision="fp32"):
    """Save ``<id>.npy`` (uint8, (20, S, S)) for every image of ``loader``; existing files are skipped by the
    caller's list. Returns the number written."""
    from pathlib import Path

    from utils.io import progress, save_npy

    out_dir = Path(out_dir)
    written = 0
    model.eval()
    for batch in progress(loader, quiet=not show_progress, desc="localization maps", unit="batch"):
        images = batch["image"].to(device)
        classes = batch["classes"].to(device)
        maps = quantize_maps(multiscale_cam(model, images, classes, scales=scales, precision=precision)).cpu().numpy()
        for image_id, array in zip(batch["id"], maps):
            save_npy(out_dir / f"{image_id}.npy", array)
            written += 1
    return written


def cam_pseudo_label(cams, background, alpha=0.2):
    """The original's quick pseudo label (original §2.8, §3.3): CAM values below ``alpha`` are dropped,
    ``background`` (B, H, W) is the 0-th score, argmax over 21 channels (ties go to the lower index)."""
    scores = torch.cat([background[:, None].to(cams.dtype), cams * (cams >= alpha)], dim=1)
    return scores.argmax(dim=1)
