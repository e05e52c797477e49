"""Throughput of stage 1: DRS vs ReLU activations and the classifier forward/backward.

    python bench/bench_stage1.py [--device cuda] [--size 320] [--batch 5] [--width 1.0] [--repeats 5]

Prints milliseconds per call (median of ``--repeats``). Targets (GPU, full size) are in docs/testing.md.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.classifier import DRSClassifier  # noqa: E402
from models.drs import FixedDRS, LearnableDRS  # noqa: E402


def timed(fn, device, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=5)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    x = torch.randn(args.batch, 64, args.size // 2, args.size // 2, device=device)
    for name, module in (("relu", torch.nn.ReLU()), ("fixed DRS", FixedDRS(0.55)), ("learnable DRS", LearnableDRS(64))):
        module.to(device)
        print(f"{name:>14}: {timed(lambda m=module: m(x), device, args.repeats):8.2f} ms  (64 x {x.shape[-1]}^2 map)")
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    for drs in (None, "learnable"):
        model = DRSClassifier(drs=drs, width=args.width).to(device)

        def step(model=model):
            model.zero_grad(set_to_none=True)
            model(images).sum().backward()

        label = drs or "relu"
        print(f"classifier {label:>9}, width {args.width}: {timed(step, device, args.repeats):8.1f} ms fwd+bwd "
              f"(batch {args.batch}, {args.size}^2)")


if __name__ == "__main__":
    main()
