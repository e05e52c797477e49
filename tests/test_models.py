"""DRS math, the classifier's structure, its parameter groups and key names."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from models import drs_kernel
from models.classifier import DRSClassifier
from models.drs import FixedDRS, LearnableDRS, SuppressionMonitor, drs_fused, drs_reference
from models.vgg import fold_batch_norm
from tests.conftest import PARITY
from utils import checkpoints


def test_fixed_drs_clips_relu_at_delta_times_channel_max():
    x = torch.tensor([[[[-1.0, 0.5], [2.0, 4.0]], [[1.0, 1.0], [0.2, -3.0]]]])  # (1, 2, 2, 2)
    y = FixedDRS(0.5)(x)
    expected = torch.tensor([[[[0.0, 0.5], [2.0, 2.0]], [[0.5, 0.5], [0.2, 0.0]]]])
    torch.testing.assert_close(y, expected)


def test_learnable_drs_gate_is_per_image_per_channel_and_clips_at_gate_times_max():
    torch.manual_seed(0)
    drs = LearnableDRS(8)
    x = torch.randn(3, 8, 5, 7)
    gate = drs.gate(torch.relu(x))
    assert gate.shape == (3, 8, 1, 1)
    assert ((gate > 0) & (gate < 1)).all()
    # the gate is sigmoid(W @ GAP(relu x)) with a bias-free 8x8 W
    assert [k for k in drs.state_dict()] == ["fc.0.weight"] and drs.fc[0].weight.shape == (8, 8)
    manual = torch.sigmoid(torch.relu(x).mean(dim=(2, 3)) @ drs.fc[0].weight.T)
    torch.testing.assert_close(gate[:, :, 0, 0], manual)
    y = drs(x)
    bound = gate * torch.relu(x).amax(dim=(2, 3), keepdim=True)
    assert (y <= bound + 1e-7).all()
    torch.testing.assert_close(y, torch.minimum(torch.relu(x), bound))


def _drs_inputs():
    """float64 activations with the ties that real and synthetic images produce: flat regions (several equal
    maxima), an all-negative channel (peak 0), and a zero next to the peak."""
    torch.manual_seed(1)
    x = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    x[0, 0] = 1.5                    # a flat channel: every position is the max
    x[0, 1, :2, :2] = 3.0            # a flat patch holding the max
    x[1, 2] = -torch.rand(5, 4, dtype=torch.float64)  # nothing survives the relu
    x[1, 3, 0, 0], x[1, 3, 0, 1] = 2.5, 0.0
    return x.requires_grad_()


@pytest.fixture(params=["compiled", "torch ops"])
def implementation(request, monkeypatch):
    """The fused DRS's two implementations: the compiled CPU loops (models/drs_cpu.c) and PyTorch ops (what
    runs on CUDA, or without a C compiler)."""
    if request.param == "compiled":
        if drs_kernel.load() is None:
            pytest.skip("no C compiler: the compiled DRS loops are unavailable")
    else:
        monkeypatch.setattr(drs_kernel, "usable", lambda x: False)
    return request.param


def test_the_compiled_drs_loops_load_where_a_c_compiler_exists():
    if not any(shutil.which(c) for c in ("cc", "gcc", "clang")):
        pytest.skip("no C compiler")
    assert drs_kernel.load() is not None
    assert drs_kernel.usable(torch.zeros(1, 2, 3, 3))
    assert drs_kernel.usable(torch.zeros(1, 2, 3, 3, dtype=torch.float64))
    assert not drs_kernel.usable(torch.zeros(1, 2, 3, 3, dtype=torch.bfloat16))
    assert not drs_kernel.usable(torch.zeros(1, 2, 3, 3).to(memory_format=torch.channels_last))


def test_without_a_compiler_the_drs_warns_once_and_runs_on_torch_ops(tmp_path):
    """A failing build (here: CC is ``false``) is a warning, not an error: the same function on PyTorch ops."""
    script = ("import warnings, torch\nfrom models.drs import drs_fused, drs_reference\n"
              "warnings.simplefilter('always')\nx = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)\n"
              "w = torch.randn(3, 3, dtype=torch.float64)\n"
              "with warnings.catch_warnings(record=True) as caught:\n"
              "    y = drs_fused(x, w); y.sum().backward(); drs_fused(x.detach(), w)\n"
              "assert torch.equal(y, drs_reference(x, w)), 'value'\n"
              "print(len(caught), caught[0].message)\n")
    env = {**os.environ, "CC": "false", "DRS_KERNEL_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0, result.stderr
    count, message = result.stdout.split(" ", 1)
    assert count == "1" and "compiled CPU kernel is unavailable" in message and "same results" in message
    assert not any((tmp_path / "cache").glob("*"))  # no temporary left behind


@pytest.mark.parametrize("variant", ["learnable", "saturated gate", "delta 0.55", "delta 1"])
def test_fused_drs_equals_the_reference_ops_in_value_and_gradient(variant, implementation):
    """The fused autograd function against PyTorch's own relu/amax/mean/linear/sigmoid/minimum, ties included
    (minimum halves a tie's gradient, amax shares it between equal maxima)."""
    x = _drs_inputs()
    weight = (torch.randn(6, 6, dtype=torch.float64) * (0.3 if variant == "learnable" else 100.0)).requires_grad_()
    if variant.startswith("delta"):
        weight, delta = None, float(variant.split()[1])
    else:
        delta = None
    upstream = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    outputs = []
    for fn in (drs_reference, drs_fused, lambda x, w, d: drs_fused(x * 1, w, d, inplace=True),
               lambda x, w, d: drs_fused(x.to(memory_format=torch.channels_last), w, d)):  # never the C loops
        y = fn(x, weight, delta)
        inputs = (x,) if weight is None else (x, weight)
        outputs.append((y, torch.autograd.grad(y, inputs, upstream)))
    (y_ref, grads_ref), *fused_runs = outputs
    for y_fused, grads_fused in fused_runs:
        assert torch.equal(y_fused, y_ref)
        for fused, ref in zip(grads_fused, grads_ref, strict=True):
            torch.testing.assert_close(fused, ref, rtol=1e-12, atol=1e-14)
    with torch.no_grad():  # inference: the same ops, nothing saved
        assert torch.equal(drs_fused(x, weight, delta), y_ref) and torch.equal(drs_fused(x.clone(), weight, delta,
                                                                                             inplace=True), y_ref)
    if variant == "saturated gate":  # sigmoid rounds to 1: the threshold equals the peak, every max is a tie
        assert (torch.sigmoid(x.relu().mean(dim=(2, 3)) @ weight.T) == 1).any()


@pytest.mark.parametrize("learnable", [True, False])
def test_fused_drs_passes_gradcheck(learnable, implementation):
    torch.manual_seed(2)
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    if learnable:
        weight = (torch.randn(4, 4, dtype=torch.float64) * 0.5).requires_grad_()
        assert torch.autograd.gradcheck(lambda x, w: drs_fused(x, w), (x, weight))
    else:
        assert torch.autograd.gradcheck(lambda x: drs_fused(x, delta=0.55), (x,))


def test_fused_and_reference_classifiers_train_alike():
    """A float32 classifier step with the fused DRS (the default) and with the reference ops: same loss, same
    gradients up to float32 summation order."""
    torch.manual_seed(3)
    images = torch.randn(2, 3, 64, 64)
    grads = []
    for fused in (True, False):
        torch.manual_seed(4)
        model = DRSClassifier(drs="learnable", width=0.125)
        for module in model.modules():
            if isinstance(module, LearnableDRS):
                module.fused = fused
        loss = model(images).square().mean()
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0])
    for fused, ref in zip(grads[0][1], grads[1][1], strict=True):
        torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-6)


def test_fixed_drs_rejects_out_of_range_delta():
    with pytest.raises(ValueError, match="0 < delta <= 1"):
        FixedDRS(1.5)


def test_classifier_shapes_and_sixteen_drs_modules():
    model = DRSClassifier(drs="learnable", width=0.125)
    drs_modules = [m for m in model.modules() if isinstance(m, LearnableDRS)]
    assert len(drs_modules) == 16
    maps = model.class_maps(torch.zeros(2, 3, 96, 96))
    assert maps.shape == (2, 20, 12, 12)  # output stride 8
    assert model(torch.zeros(2, 3, 96, 96)).shape == (2, 20)


def test_full_size_parameter_count_and_groups_match_the_original():
    model = DRSClassifier(drs="learnable")
    assert sum(p.numel() for p in model.parameters()) == 24_401_236
    groups = model.parameter_groups(1e-3)
    assert [len(g["params"]) for g in groups] == [13, 13, 20, 4]
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 2e-3, 1e-2, 2e-2])
    gates = {id(m.fc[0].weight) for m in model.modules() if isinstance(m, LearnableDRS)}
    assert gates <= {id(p) for p in groups[2]["params"]}  # every DRS gate in the x10 group (original §2.7)
    backbone = {id(c.weight) for c in model.backbone.convs()}
    assert backbone == {id(p) for p in groups[0]["params"]}


def test_head_init_follows_the_reference():
    torch.manual_seed(0)
    model = DRSClassifier(drs="learnable")
    assert model.extra_conv1.weight.std().item() == pytest.approx((2 / 4608) ** 0.5, rel=0.02)
    assert model.extra_conv4.weight.std().item() == pytest.approx((2 / 20) ** 0.5, rel=0.1)
    assert model.extra_conv1.bias.abs().max() == 0
    gate_weights = torch.cat([m.fc[0].weight.flatten() for m in model.modules() if isinstance(m, LearnableDRS)])
    assert gate_weights.std().item() == pytest.approx(0.01, rel=0.05)


@pytest.mark.parametrize("spec, drs", [("drs_cls_learnable", "learnable"), ("drs_cls_delta", 0.55)])
def test_released_key_set_round_trips(spec, drs):
    keys = [entry["key"] for entry in json.loads((PARITY / "specs" / f"{spec}.json").read_text())["keys"]]
    model = DRSClassifier(drs=drs, width=1.0)
    released = checkpoints.ours_to_released_vgg(model.state_dict())
    assert sorted(released) == sorted(keys)
    assert len(released) == {"drs_cls_learnable": 76, "drs_cls_delta": 60}[spec]
    back = checkpoints.released_vgg_to_ours(released)
    assert back.keys() == model.state_dict().keys()


def test_alias_that_differs_from_its_features_key_is_refused():
    released = checkpoints.ours_to_released_vgg(DRSClassifier(drs=0.5, width=0.125).state_dict())
    released["layer2_conv1.weight"] = released["layer2_conv1.weight"] + 1
    with pytest.raises(checkpoints.CheckpointError, match="layer2_conv1.weight differs from features.5.weight"):
        checkpoints.released_vgg_to_ours(released)


def test_offline_imagenet_load_fails_with_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache, and no network here or in CI

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(RuntimeError) as error:
        DRSClassifier(drs="learnable", pretrained=True)
    message = str(error.value)
    assert "vgg16-397923af.pth" in message and str(tmp_path) in message and "\n" not in message


def test_imagenet_file_loads_into_the_backbone_by_name(tmp_path):
    from torchvision.models import vgg16

    reference = vgg16(weights=None)
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(reference.state_dict(), path)
    model = DRSClassifier(drs="learnable", pretrained_path=path)
    for index in (0, 10, 28):
        torch.testing.assert_close(model.backbone.features[index].weight, reference.features[index].weight)
    assert model.backbone.features[24].dilation == (2, 2) and model.backbone.features[23].stride == 1


def test_batch_norm_backbone_folds_into_the_plain_one():
    torch.manual_seed(0)
    bn_model = DRSClassifier(drs=None, width=0.125, batch_norm=True)
    bn_model.train()
    for _ in range(3):  # running statistics that are not the initial 0 / 1
        bn_model(torch.randn(4, 3, 48, 48) * 2 + 0.5)
    for module in bn_model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.normal_(module.bias)
    bn_model.eval()
    plain = DRSClassifier(drs=None, width=0.125)
    plain.load_state_dict(fold_batch_norm(bn_model.state_dict()), strict=True)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(plain.class_maps(x), bn_model.class_maps(x), rtol=1e-4, atol=1e-4)
    convs = bn_model.backbone.convs()
    assert len(convs) == 13 and all(isinstance(c, torch.nn.Conv2d) for c in convs)


def test_suppression_monitor_reads_each_layer_before_it_clips_in_place():
    # one channel: relu gives 0, 1, 2, 4; the peak is 4, so delta 0.5 clips only the 4 (one of three positives)
    x = torch.tensor([-1.0, 1.0, 2.0, 4.0]).reshape(1, 1, 2, 2)
    net = torch.nn.Sequential(FixedDRS(0.5, inplace=True), FixedDRS(0.9, inplace=True))
    with SuppressionMonitor(net) as monitor:
        net(x.clone())
    first, second = monitor.results()
    assert (first["layer"], first["ratio"], first["clipped"]) == ("0", 0.5, pytest.approx(1 / 3))
    # the second layer sees 0, 1, 2, 2: peak 2, threshold 1.8, two of three positives above it
    assert (second["ratio"], second["clipped"]) == (pytest.approx(0.9), pytest.approx(2 / 3))

    learnable = LearnableDRS(3)
    torch.nn.init.normal_(learnable.fc[0].weight, std=2.0)
    y = torch.randn(2, 3, 5, 5)
    with SuppressionMonitor(learnable) as monitor:
        learnable(y)
    r = y.relu()
    gate = learnable.gate(r).detach()
    (stats,) = monitor.results()
    assert stats["ratio"] == pytest.approx(float(gate.mean()))
    expected = (r > gate * r.amax(dim=(2, 3), keepdim=True)).sum() / (r > 0).sum()
    assert stats["clipped"] == pytest.approx(float(expected))
    learnable(y)  # hooks are gone after the block: nothing more is counted
    assert monitor.results() == [stats]
