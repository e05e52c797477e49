"""Side-by-side tables of evaluation results (``scores.json`` files of evaluate_maps.py).

    python -m utils.reports.tables --out comparison.md "plain ReLU=outputs/demo/eval/relu/scores.json" "DRS=..."
"""

import argparse
import json
from pathlib import Path

import numpy as np

from utils.io import atomic_write


def _pct(value):
    return "–" if value is None else f"{100 * value:.1f}"


def _stat(values, scale=100.0, digits=1):
    """``mean`` for one value, ``mean ± std`` (sample std) for several; ``–`` when missing."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean = scale * float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {scale * float(np.std(values, ddof=1)):.{digits}f}"


def stage1_table(named_runs):
    """One row per variant: mAP, map mIoU under both protocols, mean map value per demo region. Each variant
    has a list of ``scores.json`` results (one per seed); with several, every cell is mean ± std over them."""
    lines = ["| variant | cls mAP | mIoU, DRS protocol (α, saliency) | mIoU, CAM protocol (best bg thr.) "
             "| map on part | map on body | map on background | body/part |",
             "|---|---|---|---|---|---|---|---|"]
    for name, runs in named_runs.items():
        regions = [r.get("regions") or {} for r in runs]
        thresholds = sorted({f"{r['cam_protocol']['best_threshold']:.2f}" for r in runs})
        cells = [
            _stat([r.get("classification", {}).get("mAP") for r in runs]),
            _stat([r.get("drs_protocol", {}).get("mean_iou") for r in runs]),
            f"{_stat([r['cam_protocol']['mean_iou'] for r in runs])} (t={'/'.join(thresholds)})",
            *(_stat([g.get(key) for g in regions], scale=1.0, digits=3)
              for key in ("part", "body", "background", "body_part_ratio")),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pipeline_table(named_results):
    """One row per stage output: maps (evaluate_maps.py) or label maps (evaluate_labels.py) on one list."""
    lines = ["| output | mIoU | mIoU, 255 counted wrong | labelled pixels |", "|---|---|---|---|"]
    for name, r in named_results.items():
        if "ignored" in r:  # label maps
            lines.append(f"| {name} | {_pct(r['ignored']['mean_iou'])} | {_pct(r['as_wrong']['mean_iou'])} | "
                         f"{_pct(r['coverage'])} % |")
        elif "mean_iou" in r:  # a segmentation network's predictions (every pixel labelled)
            lines.append(f"| {name} | {_pct(r['mean_iou'])} | – | 100.0 % |")
        else:  # maps, scored with the DRS protocol (every pixel gets a label)
            lines.append(f"| {name} | {_pct(r.get('drs_protocol', r['cam_protocol'])['mean_iou'])} | – | 100.0 % |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="markdown file to write")
    parser.add_argument("--title", default="Stage 1: localization maps")
    parser.add_argument("--kind", choices=("stage1", "pipeline"), default="stage1",
                        help="stage1: variants of the classifier; pipeline: maps and labels of successive stages")
    parser.add_argument("--note", action="append", default=[], help="a markdown file whose text follows the table")
    parser.add_argument("runs", nargs="+", metavar="NAME=SCORES_JSON[,SCORES_JSON...]",
                        help="several files (seeds; stage1 only): mean ± std")
    args = parser.parse_args(argv)
    named = {}
    for item in args.runs:
        name, _, paths = item.partition("=")
        runs = [json.loads(Path(path).read_text()) for path in paths.split(",")]
        if len(runs) > 1 and args.kind != "stage1":
            parser.error("several scores per row (seeds) are for --kind stage1")
        named[name] = runs
    every = [r for runs in named.values() for r in runs]
    first = every[0]
    if args.kind == "stage1":
        table = stage1_table(named)
    else:
        table = pipeline_table({name: runs[0] for name, runs in named.items()})
    same_list = len({r.get("list") for r in every}) == 1 and "list" in first
    seeds = max(len(runs) for runs in named.values())
    scope = f"{first['images']} images of `{first['list']}`" if same_list else ""
    if seeds > 1:
        scope += ("; " if scope else "") + f"mean ± std over {seeds} training seeds"
    scope = f"{scope}.\n\n" if scope else ""
    notes = "".join(f"\n{Path(note).read_text()}" for note in args.note)
    text = f"# {args.title}\n\n{scope}{table}{notes}"
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(text))
    print(text)


if __name__ == "__main__":
    main()
