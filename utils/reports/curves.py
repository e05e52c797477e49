"""Training curves: each run's loss, learning rate and validation mIoU from its ``log.jsonl``, drawn as a PNG.

    python -m utils.reports.curves --out outputs/demo/curves.png "stage 1 (learnable)=outputs/demo/cls_learnable" \
        "refinement=outputs/demo/refine"

One row per run, three panels: the training loss and the lr of the first parameter group over the optimizer
updates, and the validation mIoU where the run validated.
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from utils import cli
from utils.io import atomic_write
from utils.voc import DataError

PANEL_W, PANEL_H, MARGIN = 300, 170, 34
PANELS = (("loss", "train", "training loss"), ("lr", "train", "learning rate"), ("miou", "val", "val mIoU"))


def read_log(run_dir):
    """The records of ``<run_dir>/log.jsonl`` (lines that are not JSON, e.g. cut by a kill, are skipped)."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise DataError(f"no training log {path}")
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def series(records, key, event):
    """(updates, values) of ``key`` in the records of ``event``; a resumed run's repeated updates keep the last."""
    points = {}
    for record in records:
        name = f"val_{key}" if event == "val" else key
        if record.get("event") == event and name in record and "iteration" in record:
            points[int(record["iteration"])] = float(record[name])
    steps = sorted(points)
    return np.array(steps, dtype=np.float64), np.array([points[s] for s in steps], dtype=np.float64)


def _fmt(value):
    return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"


def draw_panel(draw, left, top, title, xs, ys):
    """One line plot in the box at (left, top): frame, title, the y range and the last update."""
    x0, y0, x1, y1 = left + MARGIN, top + 18, left + PANEL_W - 8, top + PANEL_H - 18
    draw.rectangle((x0, y0, x1, y1), outline=(160, 160, 160))
    draw.text((x0, top + 3), title, fill="black")
    if len(xs) == 0:
        draw.text((x0 + 8, y0 + 8), "no records", fill=(120, 120, 120))
        return
    low, high = float(ys.min()), float(ys.max())
    span = high - low or 1.0
    xmax = float(xs.max()) or 1.0
    px = x0 + (xs / xmax) * (x1 - x0)
    py = y1 - (ys - low) / span * (y1 - y0)
    points = list(zip(px.tolist(), py.tolist()))
    if len(points) == 1:
        draw.ellipse((px[0] - 2, py[0] - 2, px[0] + 2, py[0] + 2), fill=(31, 119, 180))
    else:
        draw.line(points, fill=(31, 119, 180), width=2)
    draw.text((left + 2, y0 - 2), _fmt(high), fill="black")
    draw.text((left + 2, y1 - 10), _fmt(low), fill="black")
    draw.text((x1 - 60, y1 + 3), f"{int(xmax)} updates", fill="black")


def draw_curves(runs, out):
    """``runs``: [(name, run folder)] → a PNG at ``out`` (one row per run)."""
    height = len(runs) * (PANEL_H + 20)
    canvas = Image.new("RGB", (PANEL_W * len(PANELS), height), "white")
    draw = ImageDraw.Draw(canvas)
    for row, (name, folder) in enumerate(runs):
        records = read_log(folder)
        top = row * (PANEL_H + 20)
        draw.text((4, top + 2), name, fill="black")
        for col, (key, event, title) in enumerate(PANELS):
            xs, ys = series(records, key, event)
            draw_panel(draw, col * PANEL_W, top + 16, title, xs, ys)
    out = Path(out)
    atomic_write(out, lambda tmp: canvas.save(tmp, format="PNG"))
    return out


def build_parser():
    parser = cli.parser(__doc__)
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR", help="a training output folder (with log.jsonl)")
    return parser


def run(args):
    runs = []
    for item in args.runs:
        name, sep, folder = item.partition("=")
        if not sep or not folder:
            raise DataError(f"{item!r} is not NAME=RUN_DIR")
        runs.append((name, folder))
    print(f"training curves of {len(runs)} run(s) -> {draw_curves(runs, args.out)}")


def main(argv=None):
    return cli.main(run, build_parser(), argv)


if __name__ == "__main__":
    main()
