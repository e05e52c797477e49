"""PASCAL VOC 2012 layout (original §2.1, §9): paths, image-level label lists, file loaders, datasets.

Layout under ``voc_root`` (the ``VOC2012`` folder itself)::

    JPEGImages/<id>.jpg              RGB images
    SegmentationClassAug/<id>.png    palette PNGs, 0..20 and 255 (ignore)
    saliency_map/<id>.png            single-channel 0..255 saliency, salient iff > 50
    ImageSets/Segmentation/{train,val,train_aug}.txt   plain id lists
    lists/{train_aug_cls,train_cls,val_cls}.txt        "<id> <c1> <c2> ..." (0-based foreground ids)
"""

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from utils.errors import DataError

CLASS_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
NUM_CLASSES = len(CLASS_NAMES)  # foreground classes; segmentation adds background as class 0
SEG_CLASS_NAMES = ("background",) + CLASS_NAMES
IGNORE_LABEL = 255
SALIENCY_THRESHOLD = 50  # salient iff value > 50 (original §2.3)

IMAGE_DIR = "JPEGImages"
GT_DIR = "SegmentationClassAug"
SALIENCY_DIR = "saliency_map"
SPLIT_DIR = "ImageSets/Segmentation"
LIST_DIR = "lists"


def image_path(voc_root, image_id):
    return Path(voc_root) / IMAGE_DIR / f"{image_id}.jpg"


def gt_path(voc_root, image_id):
    return Path(voc_root) / GT_DIR / f"{image_id}.png"


def check_voc_root(voc_root, need=(IMAGE_DIR,)):
    """Fail with one clear line when the dataset folder or one of the sub-folders a stage needs is missing."""
    root = Path(voc_root)
    if not root.is_dir():
        raise DataError(f"VOC root {root} does not exist (expected the VOC2012 folder itself)")
    for sub in need:
        if not (root / sub).is_dir():
            raise DataError(f"VOC root {root} has no {sub}/ folder (see docs/data.md for the layout)")
    return root


MAX_PIXELS = 4096 * 4096  # above this, 20 float class maps at the image's size take over 1.3 GB per image


def _open(path, what):
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing {what}: {path}")
    too_large = (f"{what} {path} is too large (%s; at most {MAX_PIXELS / 1e6:.1f} megapixels): the class maps at "
                 "its size would not fit in memory; resize it (VOC images are at most 500x500)")
    try:
        image = Image.open(path)
        if image.width * image.height > MAX_PIXELS:
            raise DataError(too_large % f"{image.width}x{image.height}")
        image.load()
    except Image.DecompressionBombError:
        raise DataError(too_large % "beyond PIL's decompression-bomb limit") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DataError(f"cannot decode {what} {path}: {error}") from error
    return image


def load_image(path):
    """An RGB PIL image (grey and palette JPEGs are converted, like the original's ``convert('RGB')``; 16-bit
    images are scaled to 8 bits, where PIL's conversion would clip them to white)."""
    image = _open(path, "image")
    if image.mode.startswith("I;16") or image.mode == "I":
        pixels = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(pixels / 257.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def check_label_values(label, path):
    """Refuse a label map with values other than 0..20 and 255: metrics would silently skip those pixels."""
    label = np.asarray(label)
    bad = (label > NUM_CLASSES) & (label != IGNORE_LABEL)
    if bad.any():
        values = sorted(int(v) for v in np.unique(label[bad]))[:5]
        raise DataError(f"label map {path} holds values {values} ({int(bad.sum())} pixels); class ids are 0..20 and "
                        "255 (ignore)")
    return label


def load_label(path):
    """A label PNG as an int64 (H, W) array of class ids (0..20, 255 = ignore; anything else is an error)."""
    image = _open(path, "label map")
    if image.mode not in ("P", "L"):
        raise DataError(f"label map {path} has mode {image.mode}; expected a palette (P) or grey (L) PNG of class ids")
    return check_label_values(np.array(image, dtype=np.int64), path)


def binarise_saliency(saliency):
    return (np.asarray(saliency) > SALIENCY_THRESHOLD).astype(np.float32)


def labels_from_mask(mask):
    """0-based foreground classes present in a 0..20/255 label map."""
    values = np.unique(np.asarray(mask))
    return [int(v) - 1 for v in values if 1 <= v <= NUM_CLASSES]


def multi_hot(classes):
    vector = np.zeros(NUM_CLASSES, dtype=np.float32)
    vector[list(classes)] = 1.0
    return vector


def read_list(path, voc_root=None):
    """Read an image list: ``[(id, [classes])]``.

    Lines are ``<id> <c1> <c2> ...`` (the original format, 0-based foreground ids) or a bare ``<id>``.
    When no line of the file carries classes, the list is a plain id list and the image labels are derived
    from ``SegmentationClassAug`` under ``voc_root``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"list file not found: {path}")
    entries, seen = [], {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            classes = [int(f) for f in fields[1:]]
        except ValueError:
            raise DataError(f"{path}:{number}: class ids must be integers, got {line.strip()!r}") from None
        bad = [c for c in classes if not 0 <= c < NUM_CLASSES]
        if bad:
            raise DataError(f"{path}:{number}: unknown class id {bad[0]} for {fields[0]} (valid: 0..{NUM_CLASSES - 1})")
        if fields[0] in seen:
            raise DataError(f"{path}:{number}: {fields[0]} is listed twice (line {seen[fields[0]]} too); every image "
                            "once, or it would count twice")
        seen[fields[0]] = number
        entries.append((fields[0], classes))
    if not entries:
        raise DataError(f"list file {path} is empty")
    if all(not classes for _, classes in entries):
        if voc_root is None:
            raise DataError(f"{path} is a plain id list; image labels need the VOC root to be derived")
        entries = [(image_id, labels_from_mask(load_label(gt_path(voc_root, image_id)))) for image_id, _ in entries]
    return entries


def write_cls_list(path, entries):
    """Write ``[(id, classes)]`` in the original format (trailing space kept, as the released lists have it)."""
    from utils.io import atomic_write

    text = "".join(f"{image_id} " + "".join(f"{c} " for c in classes) + "\n" for image_id, classes in entries)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_ids(path):
    path = Path(path)
    if not path.is_file():
        raise DataError(f"id list not found: {path}")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    twice = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) < len(ids) else []
    if twice:
        raise DataError(f"{path} lists {twice[0]} more than once ({len(twice)} such ids); every image once, or it "
                        "would count twice")
    return ids


def derive_cls_lists(voc_root, out_dir=None):
    """Build ``train_aug_cls.txt``, ``train_cls.txt`` and ``val_cls.txt`` from the label maps.

    train_aug = every ``SegmentationClassAug`` id not in ``ImageSets/Segmentation/val.txt``.
    Returns ``{name: path}``.
    """
    root = check_voc_root(voc_root, need=(GT_DIR, SPLIT_DIR))
    out_dir = Path(out_dir) if out_dir else root / LIST_DIR
    val_ids = read_ids(root / SPLIT_DIR / "val.txt")
    train_ids = read_ids(root / SPLIT_DIR / "train.txt")
    val_set = set(val_ids)
    aug_ids = sorted(p.stem for p in (root / GT_DIR).glob("*.png") if p.stem not in val_set)
    labels = {}

    def entries(ids):
        for image_id in ids:
            if image_id not in labels:
                labels[image_id] = labels_from_mask(load_label(gt_path(root, image_id)))
        return [(image_id, labels[image_id]) for image_id in ids]

    written = {}
    for name, ids in (("train_aug_cls", aug_ids), ("train_cls", train_ids), ("val_cls", val_ids)):
        written[name] = write_cls_list(out_dir / f"{name}.txt", entries(ids))
    return written


def ensure_list(voc_root, relative):
    """``<voc_root>/<relative>``; a missing ``lists/{train_aug_cls,train_cls,val_cls}.txt`` is derived from the
    label maps first."""
    root = Path(voc_root)
    path = root / relative
    if not path.is_file() and path.parent == root / LIST_DIR and path.stem in ("train_aug_cls", "train_cls", "val_cls"):
        derive_cls_lists(root)
    return path


def list_entries(voc_root, relative):
    """``read_list`` of ``<voc_root>/<relative>``, deriving the standard lists when missing."""
    return read_list(ensure_list(voc_root, relative), voc_root)


def main(argv=None):
    from utils import cli

    parser = cli.parser("Derive the image-level label lists from SegmentationClassAug.")
    parser.add_argument("--voc-root", required=True)
    parser.add_argument("--out", default=None, help="output folder (default: <voc-root>/lists)")

    def run(args):
        for name, path in derive_cls_lists(args.voc_root, args.out).items():
            print(f"{name}: {path} ({len(read_ids(path))} images)")

    return cli.main(run, parser, argv)


if __name__ == "__main__":
    main()


# --- datasets ----------------------------------------------------------------------------------------------

MASK_FOLDERS = {"label": GT_DIR, "saliency": SALIENCY_DIR, "parts": "PartMasks"}


def load_mask_image(voc_root, key, image_id):
    """The PIL image of one mask (``label``, ``saliency`` or ``parts``), checked for one channel."""
    path = Path(voc_root) / MASK_FOLDERS[key] / f"{image_id}.png"
    image = _open(path, {"label": "label map", "saliency": "saliency map", "parts": "part mask"}[key])
    if len(image.getbands()) != 1:
        raise DataError(f"{key} map {path} has {len(image.getbands())} channels ({image.mode}); expected one")
    if key == "label":
        check_label_values(np.asarray(image), path)
    return image


class VOCDataset:
    """The images of a list with their image-level labels and the masks a stage asks for.

    Items are dicts: ``image`` (normalised tensor), ``classes`` (20-d multi-hot), ``id``, ``size`` (original
    H, W) and each requested mask (int64 tensors; saliency stays 0..255, binarise with > 50). With
    ``maps_dir``, ``maps`` holds the stored localization maps as floats in [0, 1] (stage 2's input).
    """

    def __init__(self, voc_root, entries, transform, masks=(), maps_dir=None):
        self.root = check_voc_root(voc_root, need=(IMAGE_DIR,) + tuple(MASK_FOLDERS[m] for m in masks))
        self.entries = list(entries)
        self.transform = transform
        self.masks = tuple(masks)
        self.maps_dir = Path(maps_dir) if maps_dir else None
        if self.maps_dir and not self.maps_dir.is_dir():
            raise DataError(f"localization map folder {self.maps_dir} does not exist (run make_localization_maps.py)")

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, index):
        import torch

        image_id, classes = self.entries[index]
        image = load_image(image_path(self.root, image_id))
        sample = {"image": image}
        for key in self.masks:
            mask = load_mask_image(self.root, key, image_id)
            if mask.size != image.size:
                raise DataError(f"{key} map of {image_id} is {mask.size}, image is {image.size} (W, H)")
            sample[key] = mask
        if self.maps_dir:
            sample["maps"] = self._load_maps(image_id)
        sample = self.transform(sample)
        if self.maps_dir and sample["maps"].shape[-2:] != sample["image"].shape[-2:]:
            raise DataError(f"localization map {self.maps_dir / image_id}.npy is {tuple(sample['maps'].shape[-2:])}, "
                            f"the image is squashed to {tuple(sample['image'].shape[-2:])}; regenerate the maps "
                            "at this size")
        sample["id"] = image_id
        sample["classes"] = torch.from_numpy(multi_hot(classes))
        sample["size"] = (image.height, image.width)
        return sample


    def _load_maps(self, image_id):
        return maps_to_scores(load_localization_map(self.maps_dir / f"{image_id}.npy"))


def maps_to_scores(maps):
    """Stored uint8 localization maps as float32 scores in [0, 1] (a torch tensor), as stage 2 reads them."""
    import torch

    return torch.from_numpy(np.asarray(maps).astype(np.float32) / 255.0)


def load_localization_map(path):
    """A stored localization map: uint8 (20, S, S), checked."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing localization map: {path}")
    try:
        maps = np.load(path)
    except (ValueError, OSError) as error:
        raise DataError(f"cannot read localization map {path}: {error}") from None
    if maps.ndim != 3 or maps.shape[0] != NUM_CLASSES or maps.dtype != np.uint8:
        raise DataError(f"localization map {path} is {maps.dtype} {maps.shape}; expected uint8 ({NUM_CLASSES}, S, S)")
    return maps


def collate(samples):
    """Stack what has one shape across the batch; keep lists of the rest (e.g. original-size masks)."""
    import torch

    batch = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor) and all(v.shape == values[0].shape for v in values):
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch
