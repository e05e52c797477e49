"""evaluate_maps.py on a DRS classifier checkpoint: the per-layer suppression report next to the scores."""

import json

import pytest

from tests.conftest import run_cli


def evaluate(voc_root, checkpoint, out, *extra):
    run_cli("evaluate_maps.py", "--voc-root", voc_root, "--list", voc_root / "lists" / "val_cls.txt",
            "--checkpoint", checkpoint, "--out", out, "--num-workers", "0", "--scales", "320", *extra)
    return json.loads((out / "scores.json").read_text()), (out / "scores.md").read_text()


def test_suppression_report_follows_delta(parity_weights, parity_voc, tmp_path):
    checkpoint = parity_weights("drs_cls_delta")
    strong, report = evaluate(parity_voc, checkpoint, tmp_path / "d055", "--delta", "0.55")
    layers = strong["suppression"]
    assert len(layers) == 16 and layers[-1]["layer"] == "extra_relu3"
    assert all(s["ratio"] == pytest.approx(0.55) for s in layers)
    assert all(0 < s["clipped"] < 1 for s in layers)
    assert "| extra_relu3 | 0.550 |" in report
    none, _ = evaluate(parity_voc, checkpoint, tmp_path / "d1", "--delta", "1.0")
    assert all(s["ratio"] == 1.0 and s["clipped"] == 0 for s in none["suppression"])

    learnable, _ = evaluate(parity_voc, parity_weights("drs_cls_learnable"), tmp_path / "learnable")
    assert all(0 < s["ratio"] < 1 and 0 < s["clipped"] < 1 for s in learnable["suppression"])
