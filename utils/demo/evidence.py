"""How much class evidence each region of a demo object carries: the demo's evidence gradient, measured.

The demo data (:mod:`utils.demo.data`, version 4) is built so that an object's small part names its class
for certain while its large body only hints at it (a body hue shared with the neighbouring classes), and the
background says nothing. This module checks that claim instead of asserting it: it renders single-object
images twice, once with the part's evidence only (a class-free body colour) and once with the body's only
(the part painted as body), trains the same small CNN on each, and reports its held-out accuracy among the
six classes (chance 16.7 %). The objects are whole (no frame cuts), so each region is always in view.

    python -m utils.demo.evidence --out outputs/demo/evidence

Writes ``evidence.json`` and ``evidence.md``. Deterministic for a given seed on one machine (CPU, about a minute).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from utils.demo.data import DEFAULT_SIZE, DEMO_CLASSES, GENERATOR_VERSION, render_sample
from utils.io import atomic_write, save_json

CONDITIONS = {"part only": ("part",), "body only": ("body",)}
INPUT_SIZE = 80  # images are halved: the probe needs colour and coarse shape, and stays fast


def render_set(seed, first_index, count, size, draw):
    """``count`` single-object images (balanced classes) as a float tensor (N, 3, INPUT_SIZE, INPUT_SIZE)."""
    images, targets = [], []
    for k in range(count):
        class_index = k % len(DEMO_CLASSES)
        sample = render_sample(seed, first_index + k, DEMO_CLASSES[class_index], size, draw=draw, count=1,
                               whole_objects=True)
        images.append(sample["image"])
        targets.append(class_index)
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    batch = F.interpolate(batch, size=(INPUT_SIZE, INPUT_SIZE), mode="area")
    return (batch - 0.5) / 0.25, torch.tensor(targets)


def probe_network(num_classes):
    """Four strided convs and a global average pool: enough for colour and texture, small enough for a CPU."""
    layers, channels = [], 3
    for out in (16, 32, 64, 64):
        layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def train_and_test(train, test, seed, epochs, batch_size=32):
    torch.manual_seed(seed)
    net = probe_network(len(DEMO_CLASSES))
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    steps = epochs * -(-len(train[0]) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    images, targets = train
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(images), generator=generator).split(batch_size):
            batch = images[idx]
            if torch.rand((), generator=generator) < 0.5:  # flips: the objects have no preferred side
                batch = batch.flip(-1)
            loss = F.cross_entropy(net(batch), targets[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    net.eval()
    with torch.no_grad():
        predictions = torch.cat([net(chunk).argmax(1) for chunk in test[0].split(256)])
    return float((predictions == test[1]).float().mean())


def measure(seed=0, size=None, num_train=600, num_test=300, epochs=10, progress=print):
    size = size or DEFAULT_SIZE[GENERATOR_VERSION]
    results = {"seed": seed, "size": size, "input_size": INPUT_SIZE, "num_train": num_train, "num_test": num_test,
               "epochs": epochs, "chance": 1.0 / len(DEMO_CLASSES), "accuracy": {}}
    for name, draw in CONDITIONS.items():
        start = time.perf_counter()
        # Image indices far from the dataset's (which start at 1), so the probe never sees demo images.
        train = render_set(seed, 1_000_000, num_train, size, draw)
        test = render_set(seed, 2_000_000, num_test, size, draw)
        results["accuracy"][name] = train_and_test(train, test, seed, epochs)
        progress(f"evidence probe: {name}: {100 * results['accuracy'][name]:.1f} % "
                 f"({time.perf_counter() - start:.0f} s)")
    return results


def markdown(results):
    acc = results["accuracy"]
    rows = "\n".join(f"| {name} | {100 * value:.1f} % |" for name, value in acc.items())
    return (f"# Class evidence per region (demo data, version {GENERATOR_VERSION})\n\n"
            f"A small CNN trained on {results['num_train']} single-object images and tested on "
            f"{results['num_test']} others, with one region's class evidence left out. Chance: "
            f"{100 * results['chance']:.1f} %.\n\n| evidence drawn | held-out accuracy (6 classes) |\n|---|---|\n"
            f"{rows}\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for evidence.json and evidence.md")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=None, help="image side the objects are drawn at")
    parser.add_argument("--num-train", type=int, default=600)
    parser.add_argument("--num-test", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args(argv)
    if min(args.num_train, args.num_test, args.epochs) < 1:
        sys.exit("error: --num-train, --num-test and --epochs must be >= 1")
    out = Path(args.out)
    if (out / "evidence.json").is_file():
        print(f"evidence probe: {out / 'evidence.json'} exists; skipped")
        return
    results = measure(args.seed, args.size, args.num_train, args.num_test, args.epochs)
    text = markdown(results)
    atomic_write(out / "evidence.md", lambda tmp: Path(tmp).write_text(text))
    save_json(out / "evidence.json", results)
    print(text)


if __name__ == "__main__":
    main()
