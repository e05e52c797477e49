"""Evaluation of segmentation networks (original §7.6, §8.3), shared by DeepLab-V2 and DeepLab-V3+.

Steps, each resumable, all under one output folder::

    logit/<id>.npy    raw model output of each image (batch 1), skipped when present
    <id>.png          logits bilinearly upsampled to the GT size, softmax, argmax
    crf/<id>.png      dense CRF on the logits upsampled to the input image size, skipped when present
    scores.json, scores_crf.json, scores.md

What differs between the networks is passed in:

- ``load_input(path) -> (CHW float tensor, uint8 HWC CRF image)``: :func:`caffe_input` (V2, BGR, mean bound by
  ``functools.partial``) or :func:`imagenet_input` (V3+, RGB, optionally resized and centre-cropped); it must
  be picklable for the CRF processes;
- ``gt_transform(gt) -> gt``: applied to every GT map before scoring (V3+'s crop_val protocol), None = as read;
- ``logit_dtype``: float32 (V2) or float16 (V3+'s eval.py saves its logits so);
- the model itself.
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from utils import cli
from utils.crf import CRFParams, crf_probabilities, run_parallel
from utils.distributed import inference_device, shard
from utils.io import atomic_write, progress, save_json, save_label_png, save_npy
from utils.metrics import ConfusionMatrix, markdown_table
from utils.seg.data import load_bgr, subtract_mean
from utils.voc import DataError, check_voc_root, image_path, load_image, load_label, read_ids
from utils.wsss.transforms import IMAGENET_MEAN, IMAGENET_STD

LOGIT_DIR = "logit"
CRF_DIR = "crf"


def caffe_input(path, mean_bgr):
    """DeepLab-V2's input and CRF image: ``(CHW float32 tensor of BGR - mean, uint8 HWC BGR image)``.

    The arithmetic follows the original exactly: the float32 pixels minus the float64 mean, stored as float32;
    for the CRF that array plus the float64 mean, stored as float32, then truncated to uint8. The round trip
    turns some pixel values v into v - 1, and the original's CRF sees that image, so it is reproduced here.
    """
    centred = subtract_mean(load_bgr(path), mean_bgr)
    crf_image = (centred + np.asarray(mean_bgr, dtype=np.float64)).astype(np.float32).astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(centred.transpose(2, 0, 1))), crf_image


def resize_center_crop(image, size, interpolation):
    """torchvision's ``resize(size)`` (shorter side to ``size``) then ``center_crop(size)`` of a PIL image:
    V3+'s crop_val protocol (``ExtResize`` + ``ExtCenterCrop``)."""
    return TF.center_crop(TF.resize(image, size, interpolation), size)


def imagenet_input(path, crop=None):
    """DeepLab-V3+'s input and CRF image: ``(CHW float32 tensor of ImageNet-normalised RGB, uint8 HWC RGB image)``;
    ``crop`` = the crop_val size (the image is first resized bilinearly and centre-cropped) or None.

    The CRF image is eval.py's de-normalisation: float32 HWC ``*= std``, ``+= mean`` (float64 lists, so numpy
    computes in float64 and stores float32), ``*= 255``, truncated to uint8. The round trip turns 2-12 % of the
    parity images' values v into v - 1; the original's CRF sees that image, so it is reproduced step by step.
    """
    image = load_image(path)
    if crop is not None:
        image = resize_center_crop(image, crop, InterpolationMode.BILINEAR)
    tensor = TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)
    crf_image = tensor.permute(1, 2, 0).numpy().copy()
    crf_image *= list(IMAGENET_STD)
    crf_image += list(IMAGENET_MEAN)
    crf_image *= 255
    return tensor, crf_image.astype(np.uint8)


def crop_gt(gt, size):
    """A GT map through the crop_val protocol: shorter side resized to ``size`` with NEAREST, centre crop."""
    image = Image.fromarray(np.asarray(gt, dtype=np.uint8))  # values 0..20 and 255 fit
    return np.array(resize_center_crop(image, size, InterpolationMode.NEAREST), dtype=np.int64)


def crf_params_from_config(crf):
    """:class:`CRFParams` from a config's ``crf`` section (``iter_max``, ``pos_w``, ... as in voc12.yaml)."""
    return CRFParams(iterations=int(crf["iter_max"]), pos_w=crf["pos_w"], pos_xy_std=crf["pos_xy_std"],
                     bi_w=crf["bi_w"], bi_xy_std=crf["bi_xy_std"], bi_rgb_std=crf["bi_rgb_std"])


def logit_path(out_dir, image_id):
    return Path(out_dir) / LOGIT_DIR / f"{image_id}.npy"


def load_logit(path):
    path = Path(path)
    try:
        logit = np.load(path)
    except (ValueError, OSError) as error:
        raise DataError(f"cannot read logit file {path} (delete it to recompute): {error}") from None
    if logit.ndim != 3:
        raise DataError(f"logit file {path} has shape {logit.shape}; expected (classes, h, w)")
    return logit


@torch.inference_mode()
def validation_miou(model, voc_root, ids, gt_dir, load_input, runtime):
    """mIoU of the model's argmax on full images (no files written): the optional in-training validation.
    Each process scores its share of ``ids``; the confusion matrices are summed over the processes."""
    model.eval()
    device = runtime.device
    matrix = ConfusionMatrix()
    for image_id in shard(ids, runtime):
        image, _ = load_input(image_path(voc_root, image_id))
        gt = load_gt(gt_dir, image_id)
        logit = model(image[None].to(device))[0].float().cpu().numpy()
        matrix.update(gt, probabilities(logit, gt.shape).argmax(dim=0).numpy())
    return matrix.reduce(runtime).scores()["mean_iou"]


@torch.inference_mode()
def predict_logits(model, voc_root, ids, out_dir, load_input, device, logit_dtype=np.float32):
    """Save the model's output for each image as ``logit/<id>.npy`` (as returned, one image at a time, cast to
    ``logit_dtype``); ids whose file exists are skipped. Returns the ids computed now."""
    todo = [i for i in ids if not logit_path(out_dir, i).exists()]
    model.eval().to(device)
    for image_id in progress(todo, desc="logits", unit="image"):
        image, _ = load_input(image_path(voc_root, image_id))
        logit = model(image[None].to(device))[0]
        save_npy(logit_path(out_dir, image_id), logit.float().cpu().numpy().astype(logit_dtype, copy=False))
    return todo


def probabilities(logit, size):
    """Softmax of the logit bilinearly resized (align_corners=False) to ``size`` = (H, W): (C, H, W) float32."""
    logit = torch.from_numpy(np.asarray(logit, dtype=np.float32))[None]
    logit = F.interpolate(logit, size=tuple(size), mode="bilinear", align_corners=False)
    return F.softmax(logit, dim=1)[0]


def load_gt(gt_dir, image_id, shape=None, what=None, transform=None):
    """The GT of ``image_id``, through ``transform`` if given; with ``shape``, check that ``what`` (a prediction's
    path) has the same size."""
    gt = load_label(Path(gt_dir) / f"{image_id}.png")
    if transform is not None:
        gt = transform(gt)
    if shape is not None and tuple(shape) != gt.shape:
        raise DataError(f"{what} is {tuple(shape)} (H, W) but its GT {Path(gt_dir) / image_id}.png is {gt.shape}")
    return gt


def write_labels(ids, out_dir, gt_dir, gt_transform=None):
    """``<out>/<id>.png`` = argmax of the softmaxed logits at the GT size, scored against the GT as written."""
    matrix = ConfusionMatrix()
    for image_id in progress(ids, desc="labels", unit="image"):
        gt = load_gt(gt_dir, image_id, transform=gt_transform)
        logit = load_logit(logit_path(out_dir, image_id))
        label = probabilities(logit, gt.shape).argmax(dim=0).numpy().astype(np.uint8)
        save_label_png(Path(out_dir) / f"{image_id}.png", label)
        matrix.update(gt, label)
    return matrix


def crf_label(voc_root, image_id, out_dir, load_input, params):
    """One image's CRF label: the logit upsampled to the image size, softmax, dense CRF, argmax (a process job)."""
    _, image = load_input(image_path(voc_root, image_id))
    probs = probabilities(load_logit(logit_path(out_dir, image_id)), image.shape[:2]).numpy()
    label = crf_probabilities(image, probs, params).argmax(axis=0).astype(np.uint8)
    save_label_png(Path(out_dir) / CRF_DIR / f"{image_id}.png", label)


def write_crf_labels(voc_root, ids, out_dir, load_input, params, jobs=None):
    """``<out>/crf/<id>.png`` for every id that has none yet, over ``jobs`` processes; returns the ids done now."""
    todo = [i for i in ids if not (Path(out_dir) / CRF_DIR / f"{i}.png").exists()]
    run_parallel(crf_label, [(voc_root, i, out_dir, load_input, params) for i in todo], jobs)
    return todo


def label_file_pairs(ids, label_dir, gt_dir, gt_transform=None, desc=None):
    """``(label, gt)`` of each id: ``<label_dir>/<id>.png`` and its GT, checked to be the same size."""
    for image_id in progress(ids, quiet=desc is None, desc=desc, unit="image"):
        path = Path(label_dir) / f"{image_id}.png"
        label = load_label(path)
        yield label, load_gt(gt_dir, image_id, label.shape, path, gt_transform)


def score_label_files(ids, label_dir, gt_dir, gt_transform=None):
    matrix = ConfusionMatrix()
    for label, gt in label_file_pairs(ids, label_dir, gt_dir, gt_transform):
        matrix.update(gt, label)
    return matrix


def scores_markdown(title, results):
    """``results``: {column: scores}. Both means get a row, and the text says which is which."""
    table = markdown_table(results).rstrip("\n")
    gt_row = " | ".join(_percent(s["mean_iou_gt_classes"]) for s in results.values())
    return (f"# {title}\n\n{table}\n| mIoU over GT classes | {gt_row} |\n\n"
            "- **mIoU**: nanmean of the IoU over all 21 classes, as DRS's `IOUMetric` (a class predicted but absent "
            "from the GT counts as 0).\n"
            "- **mIoU over GT classes**: nanmean over the classes present in the GT, as DeepLab-V2's "
            "`scores` (the \"Mean IoU\" of the original `scores.json`).\n")


def _percent(value):
    return "–" if value is None or np.isnan(value) else f"{100 * value:.1f}"


def evaluate(model, voc_root, ids, out_dir, load_input, *, gt_dir, device, crf_params=None, jobs=None,
             title="Segmentation", gt_transform=None, logit_dtype=np.float32):
    """Logits, labels, optional CRF labels (``crf_params`` None = no CRF) and the score files.

    Returns ``{"scores": ..., "scores_crf": ... or None, "computed": ids whose logits were computed now}``.
    """
    out_dir = Path(out_dir)
    computed = predict_logits(model, voc_root, ids, out_dir, load_input, device, logit_dtype)
    results = {"without CRF": write_labels(ids, out_dir, gt_dir, gt_transform).scores()}
    save_json(out_dir / "scores.json", results["without CRF"])
    if crf_params is not None:
        write_crf_labels(voc_root, ids, out_dir, load_input, crf_params, jobs)
        results["with CRF"] = score_label_files(ids, out_dir / CRF_DIR, gt_dir, gt_transform).scores()
        save_json(out_dir / "scores_crf.json", results["with CRF"])
    text = scores_markdown(title, results)
    atomic_write(out_dir / "scores.md", lambda tmp: Path(tmp).write_text(text))
    return {"scores": results["without CRF"], "scores_crf": results.get("with CRF"), "computed": computed}


def summary(results):
    """One line: mIoU without (and with) CRF, each with the GT-class mean of DeepLab-V2's ``scores``."""
    def both(scores):
        return f"{100 * scores['mean_iou']:.2f} (GT-class mean {100 * scores['mean_iou_gt_classes']:.2f})"

    line = f"mIoU {both(results['scores'])}"
    if results["scores_crf"] is not None:
        line += f", with CRF {both(results['scores_crf'])}"
    return line


def eval_parser(description, default_config, network):
    """The command line both evaluation entry points share; callers may add their own flags."""
    import argparse

    parser = cli.parser(description)
    parser.add_argument("--voc-root", required=True, help="the VOC2012 folder")
    parser.add_argument("--list", required=True, help="plain id list or '<id> <c1> ...' list")
    parser.add_argument("--checkpoint", required=True, help=f"{network} checkpoint (ours or the released format)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--config", default=str(default_config))
    parser.add_argument("--crf", action=argparse.BooleanOptionalAction, default=True, help="dense-CRF labels too")
    parser.add_argument("--jobs", type=int, default=None, help="CRF processes (default: all CPUs)")
    cli.add_device(parser)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    return parser


def eval_inputs(args, val_labels):
    """``(VOC root, GT folder, ids, device)`` of an evaluation command line, each checked before any work:
    ``val_labels`` is the config's GT folder, under the VOC root or absolute; the list's first fields are the
    ids (plain and ``<id> <c1> ...`` lists alike)."""
    voc_root = check_voc_root(args.voc_root)
    gt_dir = Path(val_labels) if Path(val_labels).is_absolute() else voc_root / val_labels
    if not gt_dir.is_dir():  # found now rather than after every logit is computed
        raise DataError(f"GT folder {gt_dir} does not exist (data.val_labels)")
    ids = read_ids(args.list)
    if not ids:
        raise DataError(f"list file {args.list} is empty")
    return voc_root, gt_dir, ids, inference_device(args.device)


def eval_main(run, parser, argv=None):
    """Run an evaluation entry point through :func:`utils.cli.main`; a summary line at the end."""
    def run_and_summarise(args):
        results = run(args)
        print(f"{summary(results)} -> {Path(args.out) / 'scores.md'}")
        return results

    return cli.main(run_and_summarise, parser, argv)
