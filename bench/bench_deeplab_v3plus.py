"""DeepLab-V3+ training step time for the sizes the configs use (the numbers quoted in configs/demo.yaml).

    python bench/bench_deeplab_v3plus.py [--device cuda] [--crop 97] [--batch 10] [--repeats 5]
    python bench/bench_deeplab_v3plus.py --device cuda --crop 513 --batch 16 --depth 101 --stem-channels 64 --amp bf16

Prints milliseconds per forward + backward + SGD step (median of ``--repeats``) for each requested stem width, with
the head scaled as in the demo config (head = 4 x stem channels, projection = stem channels).
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_stage1 import timed  # noqa: E402
from models.deeplab_v3plus import DeepLabV3Plus  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--crop", type=int, default=97)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--depth", type=int, default=50, choices=(50, 101))
    parser.add_argument("--stem-channels", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--output-stride", type=int, default=16, choices=(8, 16))
    parser.add_argument("--amp", choices=("bf16", "fp16"), default=None, help="CUDA autocast dtype")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    images = torch.randn(args.batch, 3, args.crop, args.crop, device=device)
    labels = torch.randint(0, 21, (args.batch, args.crop, args.crop), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    for width in args.stem_channels:
        head, project = (256, 48) if width == 64 else (4 * width, width)
        model = DeepLabV3Plus(depth=args.depth, output_stride=args.output_stride, stem_channels=width,
                              head_channels=head, project_channels=project).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step(model=model, optimizer=optimizer):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        millions = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"ResNet-{args.depth} stem {width:>2} (head {head}, {millions:5.1f} M parameters), OS "
              f"{args.output_stride}: {timed(step, device, args.repeats):8.1f} ms/iteration "
              f"(batch {args.batch}, {args.crop}^2, {device})")


if __name__ == "__main__":
    main()
