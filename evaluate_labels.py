"""Score label maps (pseudo labels or segmentation predictions, palette/grey PNGs) against the GT.

    python evaluate_labels.py --voc-root VOC2012 --list VOC2012/lists/train_cls.txt \
        --labels VOC2012/refined_pseudo_segmentation_labels --out results/pseudo_labels

Label value 255 (ignore) is reported as coverage and scored twice: left out ("ignored") and counted as
wrong. Writes ``scores.json`` and ``scores.md`` to ``--out``.
"""

from pathlib import Path

from utils import cli, voc
from utils.io import atomic_write, save_json
from utils.metrics import ConfusionMatrix, markdown_table
from utils.seg.evaluation import label_file_pairs


def build_parser():
    parser = cli.parser(__doc__)
    parser.add_argument("--voc-root", required=True)
    parser.add_argument("--list", required=True, help="'<id> <c1> ...' list or a plain id list")
    parser.add_argument("--labels", required=True, help="folder of <id>.png label maps")
    parser.add_argument("--gt-dir", default=voc.GT_DIR, help="GT folder under the VOC root")
    parser.add_argument("--out", required=True)
    parser.add_argument("--name", default=None)
    return parser


def evaluate(voc_root, ids, labels_dir, gt_dir=voc.GT_DIR):
    matrix = ConfusionMatrix()
    labelled = total = 0
    for pred, gt in label_file_pairs(ids, labels_dir, Path(voc_root) / gt_dir, desc="evaluating labels"):
        matrix.update(gt, pred)
        labelled += int((pred != voc.IGNORE_LABEL).sum())
        total += pred.size
    return {"images": len(ids), "coverage": labelled / max(total, 1),
            "ignored": matrix.scores(), "as_wrong": matrix.scores(unassigned_as_wrong=True)}


def run(args):
    ids = [i for i, _ in voc.read_list(args.list, voc_root=args.voc_root)]
    results = {"labels": args.labels, "list": args.list, **evaluate(args.voc_root, ids, args.labels, args.gt_dir)}
    name = args.name or Path(args.labels).name
    out = Path(args.out)
    save_json(out / "scores.json", results)
    table = markdown_table({f"{name} (255 ignored)": results["ignored"], f"{name} (255 wrong)": results["as_wrong"]})
    text = (f"# Labels: {name}\n\n{results['images']} images of {args.list}; coverage (pixels not 255): "
            f"{100 * results['coverage']:.1f} %\n\n{table}")
    atomic_write(out / "scores.md", lambda tmp: Path(tmp).write_text(text))
    print(f"{name}: mIoU {100 * results['ignored']['mean_iou']:.1f} (255 ignored), "
          f"{100 * results['as_wrong']['mean_iou']:.1f} (255 wrong), coverage {100 * results['coverage']:.1f} % "
          f"-> {out / 'scores.md'}")
    return results


def main(argv=None):
    return cli.main(run, build_parser(), argv)


if __name__ == "__main__":
    main()
