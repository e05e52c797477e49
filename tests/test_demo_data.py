"""The synthetic demo dataset: layout, determinism, value ranges and label/part/class consistency."""

import colorsys
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from utils.demo import data as demo_data
from utils.demo.data import BODY, DEMO_CLASSES, PART, PART_DIR, generate
from utils.io import voc_palette
from utils.voc import (
    GT_DIR,
    IGNORE_LABEL,
    IMAGE_DIR,
    LIST_DIR,
    SALIENCY_DIR,
    SPLIT_DIR,
    DataError,
    labels_from_mask,
    load_label,
    read_ids,
    read_list,
)

TINY = {"num_train_aug": 8, "num_train": 3, "num_val": 4, "size": 160}
ALL_IDS = [f"demo_{index:05d}" for index in range(1, 13)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    meta = generate(root, seed=0, **TINY)
    return root, meta


def _files(root):
    return {path.relative_to(root): path.read_bytes() for path in sorted(Path(root).rglob("*")) if path.is_file()}


def _open(path):
    with Image.open(path) as image:
        image.load()
    return image


def _array(path):
    return np.array(_open(path))


def _images(root, image_id):
    return (_open(root / IMAGE_DIR / f"{image_id}.jpg"), _open(root / GT_DIR / f"{image_id}.png"),
            _open(root / SALIENCY_DIR / f"{image_id}.png"), _open(root / PART_DIR / f"{image_id}.png"))


def test_layout_and_splits(tiny):
    root, meta = tiny
    for folder, suffix in demo_data.PER_IMAGE_FILES:
        assert sorted(p.name for p in (root / folder).iterdir()) == [f"{i}{suffix}" for i in ALL_IDS]
    train_aug, train, val = (read_ids(root / SPLIT_DIR / f"{name}.txt") for name in ("train_aug", "train", "val"))
    assert train_aug == ALL_IDS[:8] and train == ALL_IDS[:3] and val == ALL_IDS[8:]
    assert set(train) <= set(train_aug) and not set(val) & set(train_aug)
    assert "synthetic" in (root / "README.txt").read_text().lower()
    assert json.loads((root / "demo_meta.json").read_text()) == meta
    assert meta["counts"] == {"train_aug": 8, "train": 3, "val": 4}
    assert meta["class_ids"] == list(DEMO_CLASSES) and meta["size"] == 160 and meta["params"]["version"] == 4
    assert meta["class_names"] == ["aeroplane", "bird", "car", "cat", "dog", "person"]


def test_file_formats_and_value_ranges(tiny):
    root, _ = tiny
    allowed_labels = {0, IGNORE_LABEL} | {c + 1 for c in DEMO_CLASSES}
    for image_id in ALL_IDS:
        image, label, saliency, parts = _images(root, image_id)
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (160, 160)
        assert label.mode == "P" and label.getpalette()[:63] == voc_palette()[:63]
        assert saliency.mode == "L" and parts.mode == "L"
        assert label.size == saliency.size == parts.size == (160, 160)
        assert set(np.unique(np.array(label)).tolist()) <= allowed_labels
        assert set(np.unique(np.array(parts)).tolist()) <= {0, BODY, PART}
        assert np.array(image).std() > 10  # textured, not flat


def test_labels_parts_and_class_lists_agree(tiny):
    root, meta = tiny
    listed = dict(read_list(root / LIST_DIR / "train_aug_cls.txt") + read_list(root / LIST_DIR / "val_cls.txt"))
    for image_id in ALL_IDS:
        label = load_label(root / GT_DIR / f"{image_id}.png")
        parts = _array(root / PART_DIR / f"{image_id}.png")
        assert (label == 0).tolist() == (parts == 0).tolist()  # objects = body + part, both labelled
        assert (parts == PART).any()
        classes = labels_from_mask(label)
        assert classes and set(classes) <= set(DEMO_CLASSES)
        assert listed[image_id] == classes
        # Each part pixel carries its object's class: the part sits inside one connected object.
        part_classes = set(np.unique(label[parts == PART]).tolist()) - {IGNORE_LABEL}
        assert part_classes <= {c + 1 for c in classes}
    counted = sum(meta["images_per_class"]["train_aug"].values()) + sum(meta["images_per_class"]["val"].values())
    assert counted == sum(len(listed[i]) for i in ALL_IDS)


def test_ignore_band_is_a_thin_object_outline(tiny):
    root, _ = tiny
    for image_id in ALL_IDS:
        label = load_label(root / GT_DIR / f"{image_id}.png")
        parts = _array(root / PART_DIR / f"{image_id}.png")
        band = label == IGNORE_LABEL
        assert band.any()
        assert (parts[band] != 0).all()  # the band lies on the objects' own edge pixels
        # 1 px thick: every band pixel touches a pixel of another value (4-neighbourhood).
        padded = np.pad(label, 1, mode="edge")
        neighbours = [padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]
        touches_other = np.any([(n != IGNORE_LABEL) for n in neighbours], axis=0)
        assert touches_other[band].all()


def test_objects_are_long_and_parts_small_at_one_end():
    # whole objects (the frame cuts some in version 4: test_version_4_cuts_some_objects_by_the_frame)
    for index in range(1, 13):
        parts = demo_data.render_sample(0, index, DEMO_CLASSES[index % 6], 160, whole_objects=True)["parts"]
        part_fraction = (parts == PART).sum() / (parts > 0).sum()
        assert 0.04 < part_fraction < 0.2
        # The part sits at one end: some body pixel lies 6 cells of a stride-8 map away from every part.
        rows, cols = np.nonzero(parts == PART)
        body_rows, body_cols = np.nonzero(parts == BODY)
        distance = np.hypot(body_rows[:, None] - rows[None], body_cols[:, None] - cols[None]).min(axis=1)
        assert distance.max() >= 48


def _saturation(pixels):
    pixels = pixels.astype(float)
    high, low = pixels.max(axis=-1), pixels.min(axis=-1)
    return (high - low) / np.maximum(high, 1)


def test_bodies_carry_class_colour_and_backgrounds_none(tiny):
    root, _ = tiny
    for image_id in ALL_IDS:
        image = _array(root / IMAGE_DIR / f"{image_id}.jpg")
        label = load_label(root / GT_DIR / f"{image_id}.png")
        parts = _array(root / PART_DIR / f"{image_id}.png")
        background = _saturation(image[parts == 0])
        assert np.quantile(background, 0.99) < 0.3  # greyish everywhere (JPEG adds a little colour)
        for class_id in labels_from_mask(label):
            body = (label == class_id + 1) & (parts == BODY)
            if body.sum() < 200:  # mostly hidden by a later object
                continue
            assert np.median(_saturation(image[body])) > 0.35
            red, green, blue = np.median(image[body].astype(float), axis=0) / 255.0
            hue = colorsys.rgb_to_hsv(red, green, blue)[0]
            low, high = demo_data.body_hue_window(class_id)
            assert any(low - 0.06 <= h <= high + 0.06 for h in (hue, hue - 1, hue + 1))


def test_leaving_a_region_out_changes_only_its_pixels():
    size = 160
    full = demo_data.render_sample(0, 5, DEMO_CLASSES[2], size)
    no_part = demo_data.render_sample(0, 5, DEMO_CLASSES[2], size, draw=("body",))
    no_body = demo_data.render_sample(0, 5, DEMO_CLASSES[2], size, draw=("part",))
    for sample in (no_part, no_body):
        for key in ("label", "parts", "saliency"):
            assert np.array_equal(sample[key], full[key])
        assert sample["classes"] == full["classes"]
    part, body = full["parts"] == PART, full["parts"] == BODY
    assert np.array_equal(no_part["image"][~part], full["image"][~part])
    assert not np.array_equal(no_part["image"][part], full["image"][part])
    assert np.array_equal(no_body["image"][part], full["image"][part])
    assert np.array_equal(no_body["image"][parts_free := (full["parts"] == 0)], full["image"][parts_free])
    assert np.median(_saturation(no_body["image"][body])) < np.median(_saturation(full["image"][body]))
    single = demo_data.render_sample(0, 5, DEMO_CLASSES[2], size, count=1)
    assert single["classes"] == [DEMO_CLASSES[2]]


def test_version_2_is_kept_with_thinner_bodies_and_wider_hue_windows(tmp_path):
    meta = generate(tmp_path, seed=0, num_train_aug=6, num_train=1, num_val=1, version=2)
    assert meta["params"]["version"] == 2 and meta["size"] == 160
    low, high = meta["body_hue_windows"]["aeroplane"]
    assert high - low == pytest.approx(0.44) and demo_data.body_hue_window(0) == pytest.approx((-0.15, 0.15))
    objects = {version: [] for version in (2, 3)}
    for index in range(1, 7):
        for version in (2, 3):
            sample = demo_data.render_sample(0, index, DEMO_CLASSES[0], 160, version=version, count=1)
            objects[version].append((sample["parts"] > 0).mean())
    # the same draws scale the bodies: version 3's cover about twice the area of version 2's
    assert all(1.7 < v3 / v2 < 2.6 for v2, v3 in zip(objects[2], objects[3], strict=True))


def _frame(array):
    return np.concatenate([array[0], array[-1], array[1:-1, 0], array[1:-1, -1]])


def test_version_4_cuts_some_objects_by_the_frame(tmp_path):
    meta = generate(tmp_path, seed=0, num_train_aug=6, num_train=1, num_val=1, version=4)
    assert meta["params"]["version"] == 4 and meta["size"] == 160 and meta["cut_by_frame"]["probability"] == 0.4
    assert meta["body_hue_windows"] == generate(tmp_path / "v3", seed=0, num_train_aug=6, num_train=1,
                                                num_val=1)["body_hue_windows"]
    cut, partless, object_frame, ignored_frame = 0, 0, 0, 0
    for index in range(1, 61):
        sample = demo_data.render_sample(0, index, DEMO_CLASSES[index % 6], 160, version=4)
        whole = demo_data.render_sample(0, index, DEMO_CLASSES[index % 6], 160, version=4, whole_objects=True)
        three = demo_data.render_sample(0, index, DEMO_CLASSES[index % 6], 160, version=3)
        assert not _frame(whole["parts"]).any() and not _frame(three["parts"]).any()
        frame_labels = _frame(sample["label"])
        cut += bool(frame_labels.any())
        object_frame += int((frame_labels > 0).sum())
        ignored_frame += int((frame_labels == IGNORE_LABEL).sum())
        partless += sum(not ((sample["label"] == c + 1) & (sample["parts"] == PART)).any()
                        for c in set(sample["classes"]))
        for c in set(sample["classes"]):  # whatever the frame cuts, some of every named object is in view
            assert (sample["label"] == c + 1).sum() > 400
    # about 4 in 10 objects are cut (TRUNCATED_PROB), some lose their part; the frame is no outline, so an
    # object's pixels on it are labelled, not ignored (only where its outline crosses the frame)
    assert 12 <= cut <= 40 and 2 <= partless <= 20
    assert ignored_frame < 0.05 * object_frame


def test_version_1_is_kept(tmp_path):
    meta = generate(tmp_path, seed=0, num_train_aug=2, num_train=1, num_val=1, version=1)
    assert meta["params"]["version"] == 1 and meta["size"] == 112 and meta["body_hue_windows"] is None
    with pytest.raises(ValueError, match="version 2"):
        demo_data.render_sample(0, 1, DEMO_CLASSES[0], 112, version=1, draw=("part",))


def test_saliency_follows_objects(tiny):
    root, _ = tiny
    agreements = []
    for image_id in ALL_IDS:
        saliency = _array(root / SALIENCY_DIR / f"{image_id}.png").astype(float)
        objects = _array(root / PART_DIR / f"{image_id}.png") > 0
        agreements.append(saliency[objects].mean() > saliency[~objects].mean() + 100)
    assert np.mean(agreements) >= 0.75  # a few objects are deliberately missed


def test_same_seed_gives_identical_files(tiny, tmp_path):
    root, _ = tiny
    generate(tmp_path / "again", seed=0, **TINY)
    assert _files(tmp_path / "again") == _files(root)
    generate(tmp_path / "other", seed=1, **TINY)
    other = _files(tmp_path / "other")
    assert other[Path(IMAGE_DIR) / "demo_00001.jpg"] != _files(root)[Path(IMAGE_DIR) / "demo_00001.jpg"]


def test_images_do_not_depend_on_dataset_size(tiny, tmp_path):
    root, _ = tiny
    generate(tmp_path, seed=0, num_train_aug=5, num_train=2, num_val=2, size=160)
    for folder, suffix in demo_data.PER_IMAGE_FILES:
        for image_id in ALL_IDS[:5]:
            name = f"{image_id}{suffix}"
            assert (tmp_path / folder / name).read_bytes() == (root / folder / name).read_bytes()


def test_complete_dataset_is_skipped_and_changes_regenerate(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--num-train-aug", "4", "--num-train", "2", "--num-val", "2"]
    demo_data.main(args)
    assert "wrote 4 train_aug" in capsys.readouterr().out
    stamp = (tmp_path / IMAGE_DIR / "demo_00001.jpg").stat().st_mtime_ns
    demo_data.main(args)
    assert "skipped" in capsys.readouterr().out
    assert (tmp_path / IMAGE_DIR / "demo_00001.jpg").stat().st_mtime_ns == stamp

    # A smaller set in the same folder removes the images it no longer has (derived lists would find them).
    demo_data.main(["--out", str(tmp_path), "--num-train-aug", "3", "--num-train", "1", "--num-val", "1"])
    assert "wrote 3 train_aug" in capsys.readouterr().out
    assert sorted(p.stem for p in (tmp_path / GT_DIR).iterdir()) == ALL_IDS[:4]
    assert len(read_ids(tmp_path / LIST_DIR / "train_aug_cls.txt")) == 3

    demo_data.main(["--out", str(tmp_path), "--num-train-aug", "3", "--num-train", "1", "--num-val", "1", "--force"])
    assert "wrote" in capsys.readouterr().out


def test_refuses_foreign_folders_and_bad_parameters(tmp_path):
    (tmp_path / IMAGE_DIR).mkdir()
    (tmp_path / IMAGE_DIR / "2007_000032.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="not a demo file"):
        generate(tmp_path, num_train_aug=2, num_train=1, num_val=1)
    with pytest.raises(ValueError, match="num_train"):
        generate(tmp_path / "new", num_train_aug=2, num_train=3, num_val=1)
    with pytest.raises(ValueError, match="size"):
        generate(tmp_path / "new", num_train_aug=2, num_train=1, num_val=1, size=64)
    with pytest.raises(ValueError, match="version"):
        generate(tmp_path / "new", num_train_aug=2, num_train=1, num_val=1, version=5)


def test_class_plan_is_balanced():
    plan = demo_data.class_plan(seed=0, split_key=0, count=60)
    assert sorted(plan) == sorted(list(DEMO_CLASSES) * 10)
    assert demo_data.class_plan(seed=0, split_key=0, count=12) == plan[:12]


def _overlaps_window(hue_bin, window):
    """Does hue bin ``hue_bin`` (of 12) share hues with ``window`` (low, high; may reach below 0 or above 1)?"""
    low, high = window
    return any(low < (hue_bin + 1) / 12 + shift and hue_bin / 12 + shift < high for shift in (-1, 0, 1))


def test_hue_labels_name_each_body_colour_in_the_lists_only(tmp_path):
    plain_root, hue_root = tmp_path / "plain", tmp_path / "hue"
    generate(plain_root, seed=0, **TINY)
    meta = generate(hue_root, seed=0, hue_labels=True, **TINY)
    assert meta["params"]["hue_labels"] is True
    assert set(demo_data.HUE_LABEL_IDS).isdisjoint(DEMO_CLASSES) and len(demo_data.HUE_LABEL_IDS) == 12
    hue_files, plain_files = _files(hue_root), _files(plain_root)
    assert {k: v for k, v in hue_files.items() if k.parts[0] != LIST_DIR and k.name != "demo_meta.json"} == {
        k: v for k, v in plain_files.items() if k.parts[0] != LIST_DIR and k.name != "demo_meta.json"}
    for name in ("train_aug_cls", "train_cls", "val_cls"):
        plain = dict(read_list(plain_root / LIST_DIR / f"{name}.txt"))
        extended = dict(read_list(hue_root / LIST_DIR / f"{name}.txt"))
        assert plain.keys() == extended.keys()
        for image_id, classes in extended.items():
            assert [c for c in classes if c in DEMO_CLASSES] == plain[image_id]
            bins = [demo_data.HUE_LABEL_IDS.index(c) for c in classes if c not in DEMO_CLASSES]
            assert 1 <= len(bins) <= 3 and len(bins) + len(plain[image_id]) == len(classes)
            if len(plain[image_id]) == 1:  # one class: each of its bodies' bins touches its hue window
                window = demo_data.body_hue_window(plain[image_id][0])
                assert all(_overlaps_window(b, window) for b in bins)
    with pytest.raises(ValueError, match="version 2 or later"):
        generate(tmp_path / "v1", num_train_aug=2, num_train=1, num_val=1, version=1, hue_labels=True)
