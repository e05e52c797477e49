"""Every stage's speed and memory on this device, in one command.

    python -m bench [--quick] [--device cpu|cuda] [--only NAME...] [--out outputs/bench/results.json]

Training steps (forward, backward and SGD step on random tensors of the VOC recipe's shapes, full-size
networks): stage 1 with plain ReLU, fixed δ 0.55 and learnable DRS, each DRS also with the reference
(unfused) ops, and the learnable one's fused function also on PyTorch ops instead of the compiled CPU loops
(``-torchops``: what CUDA runs); the refinement network; DeepLab-V2 (ResNet-101, MSC); DeepLab-V3+ (ResNet-101, OS 16).
Generation and evaluation (the command-line tools as users run them, on copies of the parity images with the
parity fixtures' random weights): localization maps, pseudo labels, DeepLab-V2 and V3+ evaluation, and the
dense CRF per image; maps and pseudo labels also with ``--precision bf16``.

Each case runs in a process of its own so that its peak memory is its own: on CUDA the allocator's peak, on
the CPU the growth of the resident set over what the case held before its first step (weights and inputs
excluded). Prints a table and writes JSON. ``--quick`` (a few minutes on 2 CPU cores) uses smaller batches,
fewer repeats and fewer images. Timings on a shared machine vary from run to run: compare cases within one
run (the ratios), not across runs.
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PARITY = REPO / "tests" / "fixtures" / "parity"
STEP_CASES = ["stage1/relu", "stage1/delta", "stage1/delta-reference", "stage1/learnable",
              "stage1/learnable-torchops", "stage1/learnable-reference", "refine", "deeplab_v2", "deeplab_v3plus"]
TOOL_CASES = ["maps", "maps-bf16", "pseudo_labels", "pseudo_labels-bf16", "deeplab_v2_eval", "deeplab_v3plus_eval",
              "crf"]


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------ training steps

def build_step(case, device, quick):
    """``(step_fn, images_per_step)`` for one training-step case."""
    import torch
    import torch.nn.functional as F

    import models
    from models import drs_kernel
    from models.drs import FixedDRS, LearnableDRS
    from utils.seg.training import segmentation_loss

    torch.manual_seed(0)
    if case.startswith("stage1/"):
        variant = case.split("/")[1]
        drs = {"relu": None, "delta": 0.55}.get(variant.split("-")[0], "learnable")
        model = models.build("classifier", drs=drs, width=1.0)
        for module in model.modules():
            if isinstance(module, LearnableDRS | FixedDRS):
                module.fused = not variant.endswith("reference")
        if variant.endswith("torchops"):  # the fused function on PyTorch ops (CUDA's path) instead of the C loops
            drs_kernel.usable = lambda x: False
        batch, size = (2, 320) if quick or device.type == "cpu" else (5, 320)
        images, classes = torch.randn(batch, 3, size, size), (torch.rand(batch, 20) > 0.8).float()
        loss_fn = lambda net, x: F.multilabel_soft_margin_loss(net(x), classes.to(device))  # noqa: E731
    elif case == "refine":
        model = models.build("refine")
        batch, size = (2, 320) if quick or device.type == "cpu" else (10, 320)
        images, maps = torch.randn(batch, 3, size, size), torch.rand(batch, 20, size, size)
        loss_fn = lambda net, x: F.mse_loss(net(x), maps.to(device))  # noqa: E731
    elif case == "deeplab_v2":
        model = models.build("deeplab_v2")
        batch, size = (1, 321) if quick or device.type == "cpu" else (5, 321)
        images = torch.randn(batch, 3, size, size)
        labels = torch.randint(0, 21, (batch, size, size))
        image_labels = torch.ones(batch, 21)
        loss_fn = lambda net, x: segmentation_loss(net(x), labels.to(device), image_labels.to(device))  # noqa: E731
    elif case == "deeplab_v3plus":
        model = models.build("deeplab_v3plus")
        batch, size = (2, 321) if quick or device.type == "cpu" else (16, 513)
        images = torch.randn(batch, 3, size, size)
        labels = torch.randint(0, 21, (batch, size, size))
        loss_fn = lambda net, x: F.cross_entropy(net(x), labels.to(device))  # noqa: E731
    else:
        raise SystemExit(f"unknown case {case}")
    model = model.to(device).train()
    images = images.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model, images).backward()
        optimizer.step()

    return step, batch, f"batch {batch}, {size}²"


def run_step_case(case, device, quick):
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
    step, batch, shape = build_step(case, device, quick)
    repeats = 3 if quick else 10
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = rss_mb()
    step()  # warm-up (and the optimizer's state)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        memory = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        memory = peak_rss_mb() - base
    seconds = statistics.median(times)
    return {"case": case, "what": f"training step, {shape}", "ms": 1000 * seconds, "images_per_s": batch / seconds,
            "peak_mb": memory, "repeats": repeats}


# ---------------------------------------------------------------------------------------- command-line tools

def parity_root(folder, copies):
    """The parity images ``copies`` times over (new ids) in a VOC-style folder, with their lists."""
    root = folder / "VOC2012"
    shutil.copytree(PARITY / "voc", root)
    lists = {name: (root / "lists" / f"{name}.txt").read_text().splitlines() for name in ("train_aug_cls", "val_cls")}
    for copy in range(1, copies):
        for sub, ext in (("JPEGImages", "jpg"), ("SegmentationClassAug", "png"), ("SegmentationClass", "png"),
                         ("saliency_map", "png")):
            for path in list((root / sub).glob(f"pv??_*.{ext}")):
                shutil.copy(path, path.with_name(f"c{copy}_{path.name}"))
    for name, lines in lists.items():
        ids = [line for line in lines if line.strip()]
        more = [f"c{copy}_{line}" for copy in range(1, copies) for line in ids]
        if name == "val_cls":  # SegmentationClass holds only the val images
            more = [line for line in more if (root / "SegmentationClass" / f"{line.split()[0]}.png").exists()]
        (root / "lists" / f"{name}.txt").write_text("\n".join(ids + more) + "\n")
    return root


def weights(folder, spec):
    path = folder / f"{spec}.pth"
    if not path.exists():
        subprocess.run([sys.executable, PARITY / "make_weights.py", PARITY / "specs" / f"{spec}.json", path, "--seed",
                        "0"], check=True, capture_output=True)
    return path


def tool_command(case, root, folder, device):
    """``(argv, images)`` of one tool case."""
    train, val = root / "lists" / "train_aug_cls.txt", root / "lists" / "val_cls.txt"
    count = lambda path: sum(1 for line in path.read_text().splitlines() if line.strip())  # noqa: E731
    dev = ["--device", device.type]
    if case.endswith("-bf16"):  # the generation tools' --precision bf16
        argv, images = tool_command(case.removesuffix("-bf16"), root, folder, device)
        return [*argv, "--precision", "bf16"], images
    if case == "maps":
        return (["make_localization_maps.py", "--voc-root", root, "--list", train, "--checkpoint",
                 weights(folder, "drs_cls_learnable"), "--out", folder / "maps", *dev], count(train))
    if case == "pseudo_labels":
        return (["make_pseudo_labels.py", "--voc-root", root, "--list", train, "--checkpoint",
                 weights(folder, "drs_refine"), "--out", folder / "labels", *dev], count(train))
    if case == "deeplab_v2_eval":
        return (["DeepLab-V2-PyTorch/eval.py", "--config", "DeepLab-V2-PyTorch/configs/voc12.yaml", "--voc-root", root,
                 "--list", val, "--checkpoint", weights(folder, "deeplabv2_msc"), "--out", folder / "v2", *dev],
                count(val))
    if case == "deeplab_v3plus_eval":
        return (["DeepLabV3Plus-Pytorch/eval.py", "--config", "DeepLabV3Plus-Pytorch/configs/voc.yaml", "--voc-root",
                 root, "--list", val, "--checkpoint", weights(folder, "deeplabv3plus_resnet101"), "--out",
                 folder / "v3p", "--no-crf", *dev], count(val))
    raise SystemExit(f"unknown case {case}")


def run_tool_case(case, device, quick, folder):
    if case == "crf":
        return run_crf_case(quick)
    root = parity_root(folder, 1 if quick else 4)
    argv, images = tool_command(case, root, folder, device)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *map(str, argv)], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{case} failed:\n{result.stderr[-2000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"case": case, "what": f"{argv[0]} on {images} parity images (process start included)",
            "ms": 1000 * seconds / images, "images_per_s": images / seconds, "peak_mb": peak, "repeats": 1}


def run_crf_case(quick):
    import numpy as np
    from PIL import Image

    from utils.crf import crf_probabilities

    image = np.asarray(Image.open(PARITY / "voc" / "JPEGImages" / "pv03_chelsea.jpg").convert("RGB"))
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(21), size=image.shape[:2]).transpose(2, 0, 1).astype(np.float32)
    crf_probabilities(image, probabilities)  # warm-up
    repeats = 2 if quick else 5
    start = time.perf_counter()
    for _ in range(repeats):
        crf_probabilities(image, probabilities)
    seconds = (time.perf_counter() - start) / repeats
    return {"case": "crf", "what": f"dense CRF, 10 iterations, one {image.shape[1]}x{image.shape[0]} image, one core",
            "ms": 1000 * seconds, "images_per_s": 1 / seconds, "peak_mb": None, "repeats": repeats}


# ---------------------------------------------------------------------------------------------------- driver

def run_case(case, device, quick):
    import torch

    device = torch.device(device)
    if case in STEP_CASES:
        return run_step_case(case, device, quick)
    with tempfile.TemporaryDirectory(prefix="drs-bench-") as folder:
        return run_tool_case(case, device, quick, Path(folder))


def table(results):
    lines = ["| case | what | ms per image or step | images/s | peak memory (MB) |", "|---|---|---|---|---|"]
    for r in results:
        peak = "–" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        lines.append(f"| {r['case']} | {r['what']} | {r['ms']:.1f} | {r['images_per_s']:.2f} | {peak} |")
    ratios = []
    by_case = {r["case"]: r for r in results}
    base = by_case.get("stage1/relu")
    for name in ("stage1/delta", "stage1/delta-reference", "stage1/learnable", "stage1/learnable-torchops",
                 "stage1/learnable-reference"):
        if base and name in by_case:
            r = by_case[name]
            ratios.append(f"- {name} / stage1/relu: time {r['ms'] / base['ms']:.2f}×, memory "
                          f"{r['peak_mb'] / base['peak_mb']:.2f}×")
    return "\n".join(lines + ([""] + ratios if ratios else []))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller batches, fewer repeats and images")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--only", nargs="+", default=None, metavar="CASE", help=f"cases: {STEP_CASES + TOOL_CASES}")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench" / "results.json")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # one case, in a child process
    args = parser.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.case:
        print(json.dumps(run_case(args.case, args.device, args.quick)))
        return
    cases = args.only or STEP_CASES + TOOL_CASES
    unknown = [c for c in cases if c not in STEP_CASES + TOOL_CASES]
    if unknown:
        parser.error(f"unknown case {unknown[0]} (one of {', '.join(STEP_CASES + TOOL_CASES)})")
    results = []
    for case in cases:
        print(f"{case} ...", file=sys.stderr, flush=True)
        child = subprocess.run([sys.executable, "-m", "bench.run", "--case", case, "--device", args.device]
                               + (["--quick"] if args.quick else []), cwd=REPO, capture_output=True, text=True)
        if child.returncode != 0:
            raise SystemExit(f"bench case {case} failed:\n{child.stderr[-3000:]}")
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    report = table(results)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": args.device, "quick": args.quick, "results": results}, indent=1))
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
