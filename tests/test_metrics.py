"""The confusion-matrix metric against the original's (parity fixture G)."""

import json
import math

import numpy as np

from tests.conftest import PARITY
from utils.metrics import ConfusionMatrix, markdown_table

EXPECTED = PARITY / "expected"


def assert_scores(ours, original_iou_metric, original_v2):
    assert math.isclose(ours["mean_iou"], original_iou_metric["Mean_IoU"], rel_tol=0, abs_tol=1e-12)
    assert math.isclose(ours["mean_iou_gt_classes"], original_v2["Mean IoU"], rel_tol=0, abs_tol=1e-12)
    assert math.isclose(ours["pixel_accuracy"], original_iou_metric["Pixel_Accuracy"], abs_tol=1e-12)
    assert math.isclose(ours["mean_accuracy"], original_iou_metric["Mean_Accuracy"], abs_tol=1e-12)
    assert math.isclose(ours["frequency_weighted_iou"], original_iou_metric["Frequency_Weighted_IoU"], abs_tol=1e-12)
    for cls, value in original_iou_metric["Class_IoU"].items():
        if value is None:
            assert ours["class_iou"][cls] is None
        else:
            assert math.isclose(ours["class_iou"][cls], value, abs_tol=1e-12)


def test_metric_matches_original_per_pair_and_accumulated():
    inputs = np.load(EXPECTED / "G_metric_inputs.npz")
    expected = json.loads((EXPECTED / "G_metric_results.json").read_text())
    total = ConfusionMatrix()
    for index, pair in enumerate(expected["pairs"]):
        gt, pred = inputs[f"gt_{index}"], inputs[f"pred_{index}"]
        assert_scores(ConfusionMatrix().update(gt, pred).scores(), pair["IOUMetric"], pair["deeplabv2_scores"])
        total.update(gt, pred)
    assert_scores(total.scores(), expected["accumulated"]["IOUMetric"], expected["accumulated"]["deeplabv2_scores"])


def test_uint8_inputs_do_not_overflow_and_255_predictions_are_counted_apart():
    gt = np.array([[20, 20], [255, 1]], dtype=np.uint8)
    pred = np.array([[20, 255], [3, 1]], dtype=np.uint8)
    matrix = ConfusionMatrix().update(gt, pred)
    assert matrix.hist[20, 20] == 1 and matrix.hist[1, 1] == 1
    assert matrix.hist.sum() == 2 and matrix.unassigned.tolist() == [0] * 20 + [1]
    assert matrix.scores()["class_iou"]["20"] == 1.0
    assert matrix.scores(unassigned_as_wrong=True)["class_iou"]["20"] == 0.5


def test_markdown_table_lists_every_class_and_the_mean():
    scores = ConfusionMatrix().update(np.array([0, 1]), np.array([0, 1])).scores()
    table = markdown_table({"run": scores})
    assert "| background | 100.0 |" in table and "| tvmonitor | – |" in table and "**100.0**" in table


def test_map_evaluator_reports_where_each_region_falls_short():
    from utils.wsss.evaluation import MapEvaluator

    gt = np.zeros((4, 4), np.uint8)
    gt[:, 2:] = 3  # class 2 (0-based) on the right half
    gt[0, 3] = 255
    parts = np.zeros((4, 4), np.uint8)
    parts[:, 2] = 1  # body
    parts[:, 3] = 2  # part
    maps = np.zeros((20, 4, 4), np.float32)
    maps[2, :, 3] = 1.0  # the map covers the part only
    maps[2, 0, 2] = 0.5  # and one body pixel
    classes = np.zeros(20)
    classes[2] = 1
    evaluator = MapEvaluator(alpha=0.2)
    evaluator.add(maps, classes, gt, saliency=np.where(gt > 0, 255, 0).astype(np.uint8), parts=parts)
    regions = evaluator.results()["regions"]
    assert regions["below_alpha"] == {"background": 1.0, "body": 0.75, "part": 0.0}
    assert regions["drs_correct"] == {"background": 1.0, "body": 0.25, "part": 1.0}
