"""Side-by-side tables of evaluation results (``scores.json`` files of evaluate_maps.py).

    python -m utils.report --out comparison.md "plain ReLU=outputs/demo/eval/relu/scores.json" "DRS=..."
"""

import argparse
import json
from pathlib import Path

from utils.io import atomic_write


def _pct(value):
    return "–" if value is None else f"{100 * value:.1f}"


def stage1_table(named_results):
    """One row per variant: mAP, map mIoU under both protocols, mean map value per demo region."""
    lines = ["| variant | cls mAP | mIoU, DRS protocol (α, saliency) | mIoU, CAM protocol (best bg thr.) "
             "| map on part | map on body | map on background | body/part |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in named_results.items():
        cam = r["cam_protocol"]
        regions = r.get("regions")
        region_cells = (f"{regions['part']:.3f} | {regions['body']:.3f} | {regions['background']:.3f} | "
                        f"{regions['body_part_ratio']:.3f}") if regions else "– | – | – | –"
        lines.append(f"| {name} | {_pct(r.get('classification', {}).get('mAP'))} | "
                     f"{_pct(r.get('drs_protocol', {}).get('mean_iou'))} | "
                     f"{_pct(cam['mean_iou'])} (t={cam['best_threshold']:.2f}) | {region_cells} |")
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
    parser.add_argument("runs", nargs="+", metavar="NAME=SCORES_JSON")
    args = parser.parse_args(argv)
    named = {}
    for item in args.runs:
        name, _, path = item.partition("=")
        named[name] = json.loads(Path(path).read_text())
    first = next(iter(named.values()))
    table = stage1_table(named) if args.kind == "stage1" else pipeline_table(named)
    same_list = len({r.get("list") for r in named.values()}) == 1 and "list" in first
    scope = f"{first['images']} images of `{first['list']}`.\n\n" if same_list else ""
    text = f"# {args.title}\n\n{scope}{table}"
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(text))
    print(text)


if __name__ == "__main__":
    main()
