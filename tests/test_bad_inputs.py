"""Bad inputs end in one line on stderr and exit status 2, name the file or key, and write nothing.

Each case runs an entry point in-process, the way ``python <script> ...`` would, with one thing wrong.
"""

import os

import numpy as np
import pytest
import torch

from tests.conftest import REPO, entry_point


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(kind, seed) -> path``: narrow, untrained classifier and refinement checkpoints in our format (cheap to
    load and run; the error paths and the file handling do not need trained weights)."""
    import models
    from utils import checkpoints

    folder = tmp_path_factory.mktemp("tiny")
    made = {}

    def make(kind, seed=0):
        if (kind, seed) not in made:
            torch.manual_seed(seed)
            args = {"classifier": {"num_classes": 20, "drs": "learnable", "width": 0.125},
                    "refine": {"num_classes": 20, "width": 0.125},
                    "deeplab_v2": {"n_blocks": [1, 1, 1, 1], "width": 0.125, "scales": []}}[kind]
            made[kind, seed] = checkpoints.save(folder / f"{kind}_{seed}.pth", kind=kind,
                                                model=models.build(kind, **args), model_args=args)
        return made[kind, seed]

    return make


def refused(script, argv, capsys):
    """Run ``script`` with ``argv``; return its one-line error (asserting exit status 2 and no traceback)."""
    with pytest.raises(SystemExit) as stop:
        entry_point(script)(list(map(str, argv)))
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


class CodeRunningPickle:
    """Unpickling this calls ``open(<marker>, 'w')``: a file that appears proves the code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def bad_checkpoints(folder):
    """``{case: path}`` of checkpoints that must be refused."""
    folder.mkdir()
    good = folder / "good.pth"
    torch.save({"model": {"weight": torch.zeros(3)}}, good)
    paths = {"missing": folder / "nowhere.pth", "empty": folder / "empty.pth", "truncated": folder / "truncated.pth",
             "not_pytorch": folder / "text.pth", "code": folder / "code.pth"}
    paths["empty"].write_bytes(b"")
    paths["truncated"].write_bytes(good.read_bytes()[:200])
    paths["not_pytorch"].write_text("this is not a checkpoint\n")
    torch.save({"model": CodeRunningPickle(str(folder / "CODE_RAN"))}, paths["code"])
    paths["wrong_keys"] = good
    paths["newer_format"] = folder / "newer.pth"
    torch.save({"format": "drs-reimpl-99", "kind": "classifier", "model": {}}, paths["newer_format"])
    return paths


CHECKPOINT_MESSAGES = {"missing": "not found", "empty": "is empty", "truncated": "truncated or not a PyTorch file",
                       "not_pytorch": "truncated or not a PyTorch file", "code": "could run code",
                       "wrong_keys": "good.pth", "newer_format": "another version of this project"}
CHECKPOINT_READERS = {
    "evaluate_maps.py": lambda voc, out, ckpt: ["--voc-root", voc, "--list", voc / "lists/train_cls.txt",
                                                "--checkpoint", ckpt, "--out", out],
    "make_pseudo_labels.py": lambda voc, out, ckpt: ["--voc-root", voc, "--list", voc / "lists/train_cls.txt",
                                                     "--checkpoint", ckpt, "--out", out],
    "DeepLab-V2-PyTorch/eval.py": lambda voc, out, ckpt: ["--voc-root", voc, "--list", voc / "lists/val_cls.txt",
                                                          "--checkpoint", ckpt, "--out", out,
                                                          "--set", "data.val_labels=SegmentationClassAug"],
}


@pytest.mark.parametrize("case", list(CHECKPOINT_MESSAGES))
@pytest.mark.parametrize("script", list(CHECKPOINT_READERS))
def test_bad_checkpoints_are_refused(script, case, parity_voc, tmp_path, capsys):
    path = bad_checkpoints(tmp_path / "ckpt")[case]
    out = tmp_path / "out"
    err = refused(script, CHECKPOINT_READERS[script](parity_voc, out, path), capsys)
    assert CHECKPOINT_MESSAGES[case] in err and str(path.name) in err
    assert not (tmp_path / "ckpt" / "CODE_RAN").exists()  # the pickle's code never ran
    assert not out.exists() or not any(p.is_file() and not p.name.startswith(".") for p in out.rglob("*"))


CONFIG_CASES = {
    "unknown key": (["--set", "train.learning_rate=0.1"], "unknown config key 'train.learning_rate'"),
    "text for a number": (["--set", "train.lr=abc"], "train.lr holds a number"),
    "number for a section": (["--set", "train=5"], "train is a section"),
    "not YAML": (["--set", "train.lr=[1"], "not valid YAML"),
    "no key=value": (["--set", "train.lr"], "not of the form key=value"),
    "zero epochs": (["--set", "train.epochs=0"], "train.epochs must be"),
    "device name": (["--device", "gpu0"], "gpu0"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_settings_are_refused(case, parity_voc, tmp_path, capsys):
    extra, message = CONFIG_CASES[case]
    out = tmp_path / "run"
    err = refused("train_cls.py", ["--voc-root", parity_voc, "--out", out, "--no-progress", *extra], capsys)
    assert message in err and not out.exists()


def test_a_config_file_that_is_not_yaml_names_its_line(parity_voc, tmp_path, capsys):
    config = tmp_path / "broken.yaml"
    config.write_text("base: " + str(REPO / "configs" / "cls_voc.yaml") + "\ntrain:\n  lr: [0.1\n")
    err = refused("train_cls.py", ["--config", config, "--voc-root", parity_voc, "--out", tmp_path / "run"], capsys)
    assert "broken.yaml is not valid YAML (line" in err


def test_a_config_key_given_twice_is_refused(parity_voc, tmp_path, capsys):
    config = tmp_path / "twice.yaml"
    config.write_text("base: " + str(REPO / "configs" / "cls_voc.yaml") + "\ntrain:\n  lr: 0.1\n  lr: 0.2\n")
    err = refused("train_cls.py", ["--config", config, "--voc-root", parity_voc, "--out", tmp_path / "run"], capsys)
    assert "twice.yaml is not valid YAML (line 4" in err and "'lr' is given twice" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused(parity_voc, tmp_path, capsys):
    err = refused("DeepLabV3Plus-Pytorch/main.py", ["--voc-root", parity_voc, "--out", tmp_path / "run",
                                                    "--device", "cuda"], capsys)
    assert "cuda" in err.lower() and os.path.basename(str(tmp_path / "run")) not in os.listdir(tmp_path)


TINY_STAGE1 = ["--config", "configs/cls_demo.yaml", "--no-progress", "--set", "data.num_workers=0",
               "--set", "val.every=0", "--set", "train.epochs=1", "--set", "data.input_size=72",
               "--set", "data.crop_size=64"]


@pytest.fixture()
def finished_run(parity_voc, tmp_path):
    """A one-epoch stage-1 run in ``tmp_path/run``."""
    out = tmp_path / "run"
    entry_point("train_cls.py")(["--voc-root", str(parity_voc), "--out", str(out), *TINY_STAGE1])
    assert (out / "last.pth").is_file()
    return out


@pytest.mark.parametrize("extra,message", [
    ([], "already holds a training run"),
    (["--resume", "auto", "--set", "model.width=0.25"], "resume with the config it was trained with"),
    (["--resume", "auto", "--set", "train.optimizer=sgd"], "another optimizer"),
])
def test_a_run_folder_is_never_overwritten_or_resumed_with_another_model(extra, message, finished_run, parity_voc,
                                                                          capsys):
    before = {p.name: p.stat().st_mtime_ns for p in finished_run.iterdir()}
    err = refused("train_cls.py", ["--voc-root", parity_voc, "--out", finished_run, *TINY_STAGE1, *extra], capsys)
    assert message in err
    assert {p.name: p.stat().st_mtime_ns for p in finished_run.iterdir()} == before  # nothing touched


def test_generated_folders_refuse_other_settings_and_keep_their_files(tiny, parity_voc, tmp_path, capsys):
    """Maps, pseudo labels: a rerun with another checkpoint or other options into the same --out would keep the
    old files and add new ones made differently; it is refused, and a folder of unknown origin too."""
    refine, other = tiny("refine"), tiny("refine", seed=1)
    labels = tmp_path / "labels"
    argv = ["--voc-root", parity_voc, "--list", parity_voc / "lists/train_cls.txt", "--checkpoint", refine,
            "--out", labels, "--num-workers", "0", "--size", "64", "--scales", "64"]
    entry_point("make_pseudo_labels.py")(list(map(str, argv)))
    written = {p.name: p.read_bytes() for p in labels.glob("*.png")}
    assert written
    for change in (["--crf"], ["--alpha", "0.3"], ["--checkpoint", other]):
        err = refused("make_pseudo_labels.py", [*argv, *change], capsys)
        assert str(labels) in err and "other settings" in err
    assert {p.name: p.read_bytes() for p in labels.glob("*.png")} == written
    (labels / "made_with.json").unlink()
    err = refused("make_pseudo_labels.py", argv, capsys)
    assert "no made_with.json" in err


def test_deeplab_evaluation_refuses_another_checkpoints_logits(tiny, parity_voc, tmp_path, capsys):
    """eval.py keeps the logits it finds (that is how a rerun resumes): a new checkpoint into the same --out
    would be scored on the old one's logits. It is refused, and the old files stay."""
    out = tmp_path / "eval"
    argv = ["--config", "DeepLab-V2-PyTorch/configs/demo.yaml", "--voc-root", parity_voc, "--list",
            parity_voc / "lists/val_cls.txt", "--out", out, "--no-crf"]
    entry_point("DeepLab-V2-PyTorch/eval.py")(list(map(str, [*argv, "--checkpoint", tiny("deeplab_v2")])))
    written = {p.name: p.read_bytes() for p in (out / "logit").glob("*.npy")}
    assert len(written) == 2
    err = refused("DeepLab-V2-PyTorch/eval.py", [*argv, "--checkpoint", tiny("deeplab_v2", seed=1)], capsys)
    assert str(out) in err and "other settings" in err and "checkpoint" in err
    assert {p.name: p.read_bytes() for p in (out / "logit").glob("*.npy")} == written


def test_maps_refuse_another_checkpoint(tiny, parity_voc, tmp_path, capsys):
    maps = tmp_path / "maps"
    argv = ["--voc-root", parity_voc, "--list", parity_voc / "lists/train_cls.txt", "--out", maps,
            "--num-workers", "0", "--size", "64", "--scales", "64"]
    first = tiny("classifier")
    entry_point("make_localization_maps.py")(list(map(str, [*argv, "--checkpoint", first])))
    err = refused("make_localization_maps.py", [*argv, "--checkpoint", tiny("classifier", 1)], capsys)
    assert "(checkpoint_sha256 differ)" in err


def _labels_like_gt(voc_root, folder):
    """A prediction folder holding the GT maps of ``train_cls.txt`` (a perfect prediction)."""
    from PIL import Image

    folder.mkdir()
    ids = [line.split()[0] for line in (voc_root / "lists/train_cls.txt").read_text().splitlines() if line.strip()]
    for image_id in ids:
        Image.open(voc_root / "SegmentationClassAug" / f"{image_id}.png").save(folder / f"{image_id}.png")
    return ids


def _put_value(path, value):
    import numpy as np
    from PIL import Image

    label = np.array(Image.open(path))
    label[:3, :3] = value
    Image.fromarray(label.astype(np.uint8), mode="L").save(path)


@pytest.mark.parametrize("case", ["prediction value 77", "GT value 40", "id listed twice"])
def test_label_scores_refuse_values_they_cannot_count(case, parity_voc, tmp_path, capsys):
    labels = tmp_path / "pred"
    ids = _labels_like_gt(parity_voc, labels)
    listed = parity_voc / "lists/train_cls.txt"
    if case == "prediction value 77":
        _put_value(labels / f"{ids[0]}.png", 77)
        culprit = f"{ids[0]}.png"
    elif case == "GT value 40":
        _put_value(parity_voc / "SegmentationClassAug" / f"{ids[-1]}.png", 40)
        culprit = f"{ids[-1]}.png"
    else:
        listed = tmp_path / "twice.txt"
        listed.write_text("\n".join([*ids, ids[0]]) + "\n")
        culprit = ids[0]
    out = tmp_path / "scores"
    err = refused("evaluate_labels.py", ["--voc-root", parity_voc, "--list", listed, "--labels", labels,
                                         "--out", out], capsys)
    assert culprit in err and not out.exists()


def test_deriving_lists_without_the_split_files_is_one_line(parity_voc, tmp_path, capsys):
    """utils.voc derives the image-level lists from ImageSets/Segmentation/{train,val}.txt (the VOC devkit's)."""
    from utils import voc

    with pytest.raises(SystemExit) as stop:
        voc.main(["--voc-root", str(parity_voc), "--out", str(tmp_path / "lists")])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1
    assert err == f"error: id list not found: {parity_voc / 'ImageSets/Segmentation/train.txt'}"
    assert not (tmp_path / "lists").exists()


def test_an_output_folder_under_a_file_is_one_line(parity_voc, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    err = refused("train_cls.py", ["--voc-root", parity_voc, "--out", blocker / "run", *TINY_STAGE1], capsys)
    assert "a_file" in err and "Not a directory" in err


def test_a_full_disk_is_one_line_and_leaves_no_checkpoint(parity_voc, tmp_path, capsys, monkeypatch):
    import errno

    def no_space(obj, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(torch, "save", no_space)
    out = tmp_path / "run"
    err = refused("train_cls.py", ["--voc-root", parity_voc, "--out", out, *TINY_STAGE1], capsys)
    assert "No space left on device" in err and "last.pth" in err
    assert not list(out.glob("*.pth")) and not list(out.glob(".*.tmp"))


# --- images, lists and saliency maps -----------------------------------------------------------------------

def _first_id(voc_root):
    return (voc_root / "lists/train_cls.txt").read_text().split()[0]


def _break(voc_root, case):
    """Make one thing wrong in a copy of the parity dataset; return the list to use."""
    from PIL import Image

    listed = voc_root / "lists/train_cls.txt"
    first = _first_id(voc_root)
    image = voc_root / "JPEGImages" / f"{first}.jpg"
    if case == "list missing":
        return voc_root / "lists/nowhere.txt"
    if case == "list empty":
        listed.write_text("\n")
    elif case == "list with CRLF":
        listed.write_bytes(listed.read_bytes().replace(b"\n", b"\r\n"))
    elif case == "id without image":
        image.unlink()
    elif case == "zero-byte JPEG":
        image.write_bytes(b"")
    elif case == "truncated JPEG":
        image.write_bytes(image.read_bytes()[:300])
    elif case == "text as JPEG":
        image.write_text("not an image\n")
    elif case == "grey JPEG":
        Image.open(image).convert("L").save(image, format="JPEG")
    elif case == "RGBA PNG as .jpg":
        Image.open(image).convert("RGBA").save(image, format="PNG")
    elif case == "16-bit PNG as .jpg":
        grey = np.array(Image.open(image).convert("L"), dtype=np.uint16) * 257
        Image.fromarray(grey).save(image, format="PNG")
    elif case == "huge image":
        Image.new("RGB", (4200, 4100), (120, 30, 200)).save(image)
    elif case == "1x1 image":
        Image.new("RGB", (1, 1), (120, 30, 200)).save(image)
        for folder in ("SegmentationClassAug", "saliency_map"):
            Image.new("L", (1, 1), 0).save(voc_root / folder / f"{first}.png")
    elif case == "saliency missing":
        (voc_root / "saliency_map" / f"{first}.png").unlink()
    elif case == "saliency of another size":
        path = voc_root / "saliency_map" / f"{first}.png"
        Image.open(path).resize((17, 13)).save(path)
    elif case == "saliency in colour":
        path = voc_root / "saliency_map" / f"{first}.png"
        Image.open(path).convert("RGB").save(path)
    return listed


# (case, one-line message or None where the input is usable and must be handled)
IMAGE_CASES = [("list missing", "list file not found"), ("list empty", "is empty"), ("list with CRLF", None),
               ("id without image", "missing image"), ("zero-byte JPEG", "cannot decode image"),
               ("truncated JPEG", "cannot decode image"), ("text as JPEG", "cannot decode image"),
               ("grey JPEG", None), ("RGBA PNG as .jpg", None), ("16-bit PNG as .jpg", None), ("1x1 image", None),
               ("huge image", "megapixels")]
SALIENCY_CASES = [("saliency missing", "missing saliency map"), ("saliency of another size", "saliency map of"),
                  ("saliency in colour", "expected one")]


# read in the process, and for two cases in DataLoader workers too
IMAGE_RUNS = [(case, message, 0) for case, message in IMAGE_CASES] + [
    ("truncated JPEG", "cannot decode image", 2), ("16-bit PNG as .jpg", None, 2)]


@pytest.mark.parametrize("case,message,workers", IMAGE_RUNS, ids=[f"{c}-{w}-workers" for c, _, w in IMAGE_RUNS])
def test_bad_images_and_lists(case, message, workers, tiny, parity_voc, tmp_path, capsys):
    """Through make_localization_maps.py, with the images read in the process or in DataLoader workers (whose
    errors come back wrapped in the worker's traceback: only the message may reach the user)."""
    listed = _break(parity_voc, case)
    out = tmp_path / "maps"
    argv = ["--voc-root", parity_voc, "--list", listed, "--checkpoint", tiny("classifier"),
            "--out", out, "--size", "64", "--scales", "64", "--num-workers", workers]
    if message is None:
        entry_point("make_localization_maps.py")(list(map(str, argv)))
        maps = sorted(out.glob("*.npy"))
        assert len(maps) == 6 and all(np.load(m).shape == (20, 64, 64) for m in maps)
        if case == "16-bit PNG as .jpg":  # scaled to 8 bits, not clipped to white
            from utils import voc

            pixels = np.asarray(voc.load_image(parity_voc / "JPEGImages" / f"{_first_id(parity_voc)}.jpg"))
            assert 0 < pixels.mean() < 250 and pixels.std() > 10
        return
    err = refused("make_localization_maps.py", argv, capsys)
    assert message in err and "Traceback" not in err and 'File "' not in err
    if case not in ("list missing", "list empty"):
        assert _first_id(parity_voc) in err or "train_cls.txt" in err
    assert not list(out.glob("*.npy"))


@pytest.mark.parametrize("case,message", SALIENCY_CASES, ids=[c for c, _ in SALIENCY_CASES])
def test_bad_saliency_maps(case, message, tiny, parity_voc, tmp_path, capsys):
    listed = _break(parity_voc, case)
    out = tmp_path / "labels"
    err = refused("make_pseudo_labels.py", ["--voc-root", parity_voc, "--list", listed, "--checkpoint",
                                            tiny("refine"), "--out", out, "--size", "64", "--scales",
                                            "64", "--num-workers", "0"], capsys)
    assert message in err and _first_id(parity_voc) in err
    assert not list(out.glob("*.png"))
