"""A small synthetic dataset in PASCAL VOC 2012 layout, for demos and tests that cannot download VOC.

Design: the dataset is built to have the problem DRS addresses. A classifier trained on image-level labels
leans on the most discriminative evidence, so its class activation maps cover small object parts, while the
rest of an object carries weaker evidence that a classifier pushed off the part (DRS) can still use. Here
every object (version 4, the default) is

* a LARGE, elongated body: a wobbly, mottled ellipse about 116 x 54 px in a 160 px image (15 x 7 cells of a
  stride-8 feature map; whole objects cover about a fifth of the pixels) whose colour is a saturated hue drawn
  from a window of its class; the windows of neighbouring classes overlap, so the body hints at its class (a probe
  CNN names it about half the time, chance 1/6: ``utils.demo.evidence`` measures it) without deciding it, and
* a SMALL discriminative part at one end of the body (10-15 % of the object area, like a head on a torso)
  with a class-specific colour AND pattern (stripes, checker, dots, rings, cross, triangle), which names the
  class for certain.

As in photographs, the frame cuts some objects (4 in 10): part of the body is out of view, and sometimes the
part with it, so a classifier meets objects that only their body can name.

The segmentation ground truth is the whole object (body + part), and ``PartMasks/`` records which pixels
are body and which are part, so an evaluation can measure where activation maps sit.

Backgrounds carry no class evidence: greyish colour gradients, brightness noise and small flat distractor
shapes and strokes, all below the bodies' saturation, so the body's hue is never seen outside an object.
Saliency maps imitate an off-the-shelf salient-object detector: blurred, noisy object masks, with an object
occasionally missed and a false salient blob now and then.

Versions 1-3 are kept for the record (docs/demo.md). Version 3: version 4 with every object whole. Version
2: the same with thinner bodies (about 86 x 32 px, 11 x 4 cells, narrower than the plain CAM's blob around the
part) and wider hue windows (the probe: 38-42 %). Version 1 (112 px): round bodies whose colour is the same
for every class, a part anywhere inside, colourful backgrounds; with no evidence on the body, suppression could
only spread maps everywhere.

Determinism: image ``k`` is rendered from its own seed sequence ``(seed, k)`` and the class of its first
object comes from a balanced plan drawn in blocks, so a file depends only on the seed, its index and the
image size, never on the order of generation or on how many images are made.

Run ``python -m utils.demo.data --out DIR`` (see ``--help``); ``generate()`` is the Python entry point.
"""

import argparse
import colorsys
import functools
import json
import math
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from utils.io import atomic_write, save_json, save_label_png
from utils.voc import (
    CLASS_NAMES,
    GT_DIR,
    IGNORE_LABEL,
    IMAGE_DIR,
    LIST_DIR,
    NUM_CLASSES,
    SALIENCY_DIR,
    SPLIT_DIR,
    DataError,
    derive_cls_lists,
    read_list,
    write_cls_list,
)

GENERATOR_VERSION = 4  # the default; versions 1-3 stay behind --version for the record (docs/demo.md)
VERSIONS = (1, 2, 3, 4)
DEFAULT_SIZE = {1: 112, 2: 160, 3: 160, 4: 160}
DEMO_CLASSES = (0, 2, 6, 7, 11, 14)  # 0-based VOC ids: aeroplane, bird, car, cat, dog, person
PART_DIR = "PartMasks"
BODY, PART = 1, 2
META_NAME = "demo_meta.json"
README_NAME = "README.txt"
ID_PREFIX = "demo_"
MIN_SIZE = 96
JPEG_QUALITY = 95

# Class-specific part look: pattern name, pattern colour, contrast colour.
PART_STYLES = {
    0: ("stripes", (230, 25, 25), (245, 245, 245)),
    2: ("checker", (250, 215, 0), (20, 20, 20)),
    6: ("dots", (30, 70, 240), (245, 245, 245)),
    7: ("rings", (225, 0, 225), (20, 20, 20)),
    11: ("cross", (0, 190, 40), (20, 20, 20)),
    14: ("triangle", (0, 215, 215), (20, 20, 20)),
}

OBJECT_COUNT_PROBS = (0.7, 0.2, 0.1)  # 1, 2 or 3 objects per image
SEMI_AXIS_SINGLE = (22.0, 28.0)  # px; with the wobble below every body stays >= 40 px across
SEMI_AXIS_MULTI = (22.0, 25.0)  # smaller when several objects must share the image
WOBBLE_MAX = 0.035  # amplitude of each of the two shape harmonics, relative to the radius
PART_AREA_FRACTION = (0.10, 0.15)
MAX_OVERLAP = 0.10  # a new object may cover at most this fraction of the smaller object
PLACEMENT_TRIES = 40

# Versions 2 and 3: graded evidence. Sizes are for a 160 px image and scale with the image side.
V2_REFERENCE_SIZE = 160
# (long, short) semi-axis ranges in px, for an image's only object / for objects sharing the image.
# Version 2: elongated bodies about 86 x 32 px (11 x 4 cells at stride 8), thinner than the plain CAM's blob
# around the part. Version 3: large bodies about 116 x 54 px, as a photographed cat or car fills much of its
# picture (objects cover 19 % of the pixels on average, against 9 % in version 2).
SEMI_AXES = {
    2: {"single": ((38.0, 48.0), (14.0, 18.0)), "multi": ((30.0, 38.0), (12.0, 15.0))},
    3: {"single": ((52.0, 64.0), (24.0, 30.0)), "multi": ((40.0, 48.0), (18.0, 22.0))},
}
SEMI_AXES[4] = SEMI_AXES[3]
# Body hue: class i's window is centred at i/6 and reaches this far to each side. Version 2: 0.22 (1.3 class
# spacings, every hue shared by two or three classes; the probe names a body 38-42 % of the time). Version 3:
# 0.15 (0.9 spacings, one or two classes; 53 %), the middle of the range the demo aims at (well above chance,
# well below the part: 40-70 %). Chance is 1/6 in both.
BODY_HUE_HALF_WIDTH = {2: 0.22, 3: 0.15}
BODY_HUE_HALF_WIDTH[4] = BODY_HUE_HALF_WIDTH[3]
# Version 4: version 3's objects, some cut by the image frame, as photographs cut many objects (VOC marks them
# 'truncated'): with this probability an object is placed so that only part of its body is in view, and its
# part may be out of view. Versions 1-3 keep every object whole.
TRUNCATED_PROB = 0.4
TRUNCATED_VISIBLE = (0.4, 0.85)  # the share of a cut object's body area left in view
TRUNCATION_TRIES = 100
BODY_SATURATION = (0.5, 0.85)
BODY_VALUE = (0.5, 0.85)
# Backgrounds and distractors stay below this saturation, bodies above BODY_SATURATION[0]: the background
# never shows a body's colour evidence (as sky, road or grass rarely look like fur or paint).
BACKGROUND_MAX_SATURATION = 0.15
MISSED_OBJECT_PROB = 0.10
# --hue-labels (a richer pretext for the stand-in's pre-training set, docs/demo.md): each body's hue in one of
# 12 bins, named by one of the VOC ids (0-based) the six demo classes leave free.
HUE_BINS = 12
HUE_LABEL_IDS = tuple(c for c in range(NUM_CLASSES) if c not in DEMO_CLASSES)[:HUE_BINS]
FALSE_BLOB_PROB = 0.10


# ----------------------------------------------------------------------------------------------------------
# Seeds and the class plan


def image_ids(count, start=1):
    return [f"{ID_PREFIX}{index:05d}" for index in range(start, start + count)]


def _image_rng(seed, index):
    """The generator for image ``index`` alone, so each image is independent of all the others."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, index)))


def class_plan(seed, split_key, count):
    """First-object classes for ``count`` images: shuffled blocks of all classes, so classes come out balanced.

    Blocks are drawn one after another, so the first images of a split keep their classes when ``count`` grows.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, split_key)))
    blocks = -(-count // len(DEMO_CLASSES))
    plan = [int(c) for _ in range(blocks) for c in rng.permutation(DEMO_CLASSES)]
    return plan[:count]


# ----------------------------------------------------------------------------------------------------------
# Small drawing helpers


def _smooth_noise(rng, size, cells, channels=1):
    """Zero-mean, unit-ish noise that varies over ``size / cells`` pixels (bicubic upsampling of a grid)."""
    grid = rng.normal(size=(cells, cells, channels)).astype(np.float32)
    field = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    return field.reshape(size, size, channels)


def _pixel_noise(rng, shape):
    return rng.standard_normal(shape, dtype=np.float32)


def _hsv(h, s, v):
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _inner_edge(mask):
    """The 1-px band of ``mask`` pixels that touch a pixel outside it (4-connectivity)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    # Outside the image counts as object: a body cut by the frame gets no ignore band along the frame (as in
    # VOC). Versions 1-3 never touch the frame, so their bands are unchanged.
    eroded = cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=1)
    return mask & ~eroded.astype(bool)


@functools.lru_cache(maxsize=4)
def _grid(size):
    """Pixel x and y coordinates (shared and read-only, so cached)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    xx.flags.writeable = yy.flags.writeable = False
    return xx, yy


# ----------------------------------------------------------------------------------------------------------
# Background


def render_background(rng, size, version=GENERATOR_VERSION):
    """Colour gradient + smooth noise + pixel noise, then a few small flat distractors.

    Version 1 uses any colour; versions 2 and 3 keep to greyish colours (saturation below
    ``BACKGROUND_MAX_SATURATION``) and let the noise vary brightness, not hue, so the background never
    shows the saturated colours that are the bodies' class evidence.
    """
    xx, yy = _grid(size)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy) / size
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    saturation = (0.1, 0.6) if version == 1 else (0.0, BACKGROUND_MAX_SATURATION)
    start, end = (_hsv(rng.uniform(), rng.uniform(*saturation), rng.uniform(0.3, 0.9)) for _ in range(2))
    image = start + ramp[..., None] * (end - start)
    cells = int(rng.integers(3, 7))
    if version == 1:
        image += 22.0 * _smooth_noise(rng, size, cells=cells, channels=3)
    else:
        image *= 1.0 + 0.15 * _smooth_noise(rng, size, cells=cells)
    image += 4.0 * _pixel_noise(rng, image.shape)
    _draw_distractors(rng, image, max_saturation=0.7 if version == 1 else BACKGROUND_MAX_SATURATION)
    return image


def _draw_distractors(rng, image, max_saturation):
    """Strokes and small polygons: clutter that is not body-like (small, flat) and carries no part pattern."""
    size = image.shape[0]
    for _ in range(int(rng.integers(3, 8))):
        colour = _hsv(rng.uniform(), rng.uniform(0.0, max_saturation), rng.uniform(0.2, 0.95))
        colour = tuple(float(c) for c in colour)
        if rng.uniform() < 0.5:
            points = rng.uniform(0, size, size=(int(rng.integers(2, 5)), 2)).astype(np.int32)
            cv2.polylines(image, [points], False, colour, thickness=int(rng.integers(1, 4)))
        else:
            centre = rng.uniform(0, size, size=2)
            radius = rng.uniform(4, 10)
            angles = np.sort(rng.uniform(0, 2 * np.pi, size=int(rng.integers(3, 6))))
            points = centre + radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
            cv2.fillPoly(image, [points.astype(np.int32)], colour)


# ----------------------------------------------------------------------------------------------------------
# Objects: geometry


def sample_geometry(rng, size, semi_axis_range):
    """Shape and placement of one object: body ellipse (wobbly) fully inside the image, part disc inside it."""
    a, b = (float(x) for x in rng.uniform(*semi_axis_range, size=2))
    reach = max(a, b) * (1 + 2 * WOBBLE_MAX)
    centre = rng.uniform(reach + 1, size - reach - 2, size=2)
    part_radius = float(np.sqrt(rng.uniform(*PART_AREA_FRACTION) * a * b))
    # Keep the whole disc within the smallest radius the wobbly body can have.
    max_offset = max(min(a, b) * (1 - 2 * WOBBLE_MAX) - part_radius - 1.0, 0.0)
    offset = max_offset * np.sqrt(rng.uniform())  # uniform over the allowed disc
    direction = rng.uniform(0, 2 * np.pi)
    part_centre = centre + offset * np.array([np.cos(direction), np.sin(direction)])
    # Plain Python floats keep the float32 pixel grids in float32 (NumPy scalars would promote to float64).
    return {
        "centre": tuple(float(x) for x in centre),
        "axes": (a, b),
        "angle": float(rng.uniform(0, np.pi)),
        "wobble": tuple(float(x) for x in rng.uniform(0, WOBBLE_MAX, size=2)),
        "wobble_phase": tuple(float(x) for x in rng.uniform(0, 2 * np.pi, size=2)),
        "part_centre": tuple(float(x) for x in part_centre),
        "part_radius": part_radius,
        "part_angle": float(rng.uniform(0, np.pi)),
    }


def body_radius(geometry, size):
    """Normalised radius of every pixel in the body's frame: <= 1 inside the (wobbly) body outline."""
    xx, yy = _grid(size)
    dx, dy = xx - geometry["centre"][0], yy - geometry["centre"][1]
    cos, sin = math.cos(geometry["angle"]), math.sin(geometry["angle"])
    u, v = (cos * dx + sin * dy) / geometry["axes"][0], (-sin * dx + cos * dy) / geometry["axes"][1]
    theta = np.arctan2(v, u)
    outline = 1.0
    for order, amplitude, phase in zip((2, 3), geometry["wobble"], geometry["wobble_phase"], strict=True):
        outline = outline + amplitude * np.sin(order * theta + phase)
    return np.hypot(u, v) / outline


def part_coordinates(geometry, size):
    """Pixel offsets from the part centre in the part's own (rotated) frame."""
    xx, yy = _grid(size)
    dx, dy = xx - geometry["part_centre"][0], yy - geometry["part_centre"][1]
    cos, sin = math.cos(geometry["part_angle"]), math.sin(geometry["part_angle"])
    return cos * dx + sin * dy, -sin * dx + cos * dy


def object_masks(geometry, size):
    radius = body_radius(geometry, size)
    body = radius <= 1.0
    u, v = part_coordinates(geometry, size)
    part = body & (np.hypot(u, v) <= geometry["part_radius"])
    return body, part, radius


def sample_geometry_v2(rng, size, semi_axes, truncated=False):
    """Versions 2-4: an elongated body with the part at one end of its long axis (like a head on a
    torso), so the body reaches far from the part and a map that covers only the part is plain to see.

    The body lies inside the image, unless ``truncated``: then its centre may lie anywhere up to its short
    semi-axis outside the frame (the caller checks how much stays in view)."""
    scale = size / V2_REFERENCE_SIZE
    a, b = (float(rng.uniform(*axis_range)) * scale for axis_range in semi_axes)
    wobble = tuple(float(x) for x in rng.uniform(0, WOBBLE_MAX, size=2))
    reach = a * (1 + 2 * WOBBLE_MAX)
    low, high = (-b, size + b) if truncated else (reach + 1, size - reach - 2)
    centre = rng.uniform(low, high, size=2)
    angle = float(rng.uniform(0, 2 * np.pi))
    part_radius = float(np.sqrt(rng.uniform(*PART_AREA_FRACTION) * a * b))
    # The disc sits as far out as the body's guaranteed (smallest) outline keeps it inside.
    a_in, b_in = a * (1 - 2 * WOBBLE_MAX), b * (1 - 2 * WOBBLE_MAX)
    half_width_ratio = min((part_radius + 1.0) / b_in, 1.0)
    offset = min(a_in * math.sqrt(1.0 - half_width_ratio**2), a_in - part_radius - 1.0)
    part_centre = np.asarray(centre) + max(offset, 0.0) * np.array([math.cos(angle), math.sin(angle)])
    return {
        "centre": tuple(float(x) for x in centre),
        "axes": (a, b),
        "angle": angle,
        "wobble": wobble,
        "wobble_phase": tuple(float(x) for x in rng.uniform(0, 2 * np.pi, size=2)),
        "part_centre": tuple(float(x) for x in part_centre),
        "part_radius": part_radius,
        "part_angle": float(rng.uniform(0, np.pi)),
    }


def place_objects(rng, size, count, version=GENERATOR_VERSION, whole_objects=False):
    """Up to ``count`` objects that overlap little and never hide an earlier object's part.

    The first object is always placed; a later one that finds no room after a few tries is dropped. Version 4
    cuts some objects by the frame (``TRUNCATED_PROB``), unless ``whole_objects``.
    """
    if version == 1:
        semi_axes = SEMI_AXIS_SINGLE if count == 1 else SEMI_AXIS_MULTI
        sample = sample_geometry
    else:
        semi_axes = SEMI_AXES[version]["single" if count == 1 else "multi"]
        sample = sample_geometry_v2
    placed = []
    union = np.zeros((size, size), bool)
    parts = np.zeros((size, size), bool)
    for index in range(count):
        # version 4 draws, per object, whether the frame cuts it (whole_objects keeps the draw, ignores it)
        truncated = version >= 4 and bool(rng.uniform() < TRUNCATED_PROB) and not whole_objects
        for _ in range(PLACEMENT_TRIES if index else 1):
            if truncated:
                geometry, body, part, radius = _cut_by_frame(rng, size, semi_axes)
            else:
                geometry = sample(rng, size, semi_axes)
                body, part, radius = object_masks(geometry, size)
            if index == 0 or _fits(body, union, parts, placed):
                placed.append((geometry, body, part, radius))
                union |= body
                parts |= part
                break
    return placed


def _cut_by_frame(rng, size, semi_axes):
    """An object cut by the image frame, with ``TRUNCATED_VISIBLE`` of its body area in view (redrawn until
    it is; after ``TRUNCATION_TRIES`` failures, a whole object)."""
    for _ in range(TRUNCATION_TRIES):
        geometry = sample_geometry_v2(rng, size, semi_axes, truncated=True)
        body, part, radius = object_masks(geometry, size)
        visible = body.sum() / (math.pi * geometry["axes"][0] * geometry["axes"][1])
        if TRUNCATED_VISIBLE[0] <= visible <= TRUNCATED_VISIBLE[1]:
            return geometry, body, part, radius
    geometry = sample_geometry_v2(rng, size, semi_axes)
    return (geometry, *object_masks(geometry, size))


def _fits(body, union, parts, placed):
    if (body & parts).any():
        return False
    smallest = min([int(body.sum())] + [int(other.sum()) for _, other, _, _ in placed])
    return (body & union).sum() <= MAX_OVERLAP * smallest


# ----------------------------------------------------------------------------------------------------------
# Objects: appearance


def body_hue_window(class_id, version=GENERATOR_VERSION):
    """Versions 2 and 3: the (low, high) hue range of a class's bodies (may wrap around 1)."""
    centre = DEMO_CLASSES.index(class_id) / len(DEMO_CLASSES)
    return centre - BODY_HUE_HALF_WIDTH[version], centre + BODY_HUE_HALF_WIDTH[version]


def body_colour(rng, class_id, version=GENERATOR_VERSION):
    """Version 1: one brownish distribution for every class. Versions 2 and 3: a saturated colour whose hue
    comes from the class's window, which overlaps its neighbours' (weaker, class-correlated evidence)."""
    if version == 1:
        return _hsv(rng.uniform(0.03, 0.12), rng.uniform(0.2, 0.55), rng.uniform(0.45, 0.8))
    hue = rng.uniform(*body_hue_window(class_id, version))
    return _hsv(hue, rng.uniform(*BODY_SATURATION), rng.uniform(*BODY_VALUE))


def paint_body(rng, image, body, radius, colour):
    """Mottled, edge-shaded body of the given base colour."""
    size = image.shape[0]
    mottling = 1.0 + 0.12 * _smooth_noise(rng, size, cells=6) + 0.07 * _smooth_noise(rng, size, cells=size // 4)
    shading = 1.0 - 0.3 * np.minimum(radius[body], 1.0) ** 3  # darker towards the rim, like a rounded object
    pixels = colour * mottling[body] * shading[:, None] + 5.0 * _pixel_noise(rng, (int(body.sum()), 3))
    pixels[_inner_edge(body)[body]] *= 0.6  # a darker outline separates the body from clutter
    image[body] = pixels


PATTERNS = {
    "stripes": lambda u, v, r: np.floor(u / 3.0) % 2 == 0,
    "checker": lambda u, v, r: (np.floor(u / 4.0) + np.floor(v / 4.0)) % 2 == 0,
    "dots": lambda u, v, r: (np.mod(u, 5.0) - 2.5) ** 2 + (np.mod(v, 5.0) - 2.5) ** 2 <= 1.7**2,
    "rings": lambda u, v, r: np.floor(np.hypot(u, v) / 2.5) % 2 == 0,
    "cross": lambda u, v, r: (np.abs(u) <= 0.22 * r) | (np.abs(v) <= 0.22 * r),
    "triangle": lambda u, v, r: _inside_triangle(u, v, 0.45 * r),
}
REPEATING_PATTERNS = ("stripes", "checker", "dots")


def _inside_triangle(u, v, inradius):
    """Equilateral triangle centred on the origin: inside all three edge half-planes."""
    inside = np.ones_like(u, dtype=bool)
    for angle in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
        inside &= np.cos(angle) * u + np.sin(angle) * v <= inradius
    return inside


def paint_part(rng, image, part, geometry, class_id):
    """The class's pattern in its colour over a contrast colour, slightly jittered so no two parts are equal."""
    pattern, colour, contrast = PART_STYLES[class_id]
    u, v = (coordinate[part] for coordinate in part_coordinates(geometry, image.shape[0]))
    # Repeating patterns get a random phase; centred shapes (cross, triangle, rings) keep their centre.
    shift = rng.uniform(0, 5, size=2) if pattern in REPEATING_PATTERNS else np.zeros(2)
    on = PATTERNS[pattern](u + float(shift[0]), v + float(shift[1]), geometry["part_radius"])
    brightness = rng.uniform(0.85, 1.1)
    fg = np.clip(np.array(colour, np.float32) * brightness + rng.normal(0, 10, 3), 0, 255)
    bg = np.clip(np.array(contrast, np.float32) + rng.normal(0, 10, 3), 0, 255)
    image[part] = np.where(on[:, None], fg, bg) + 4.0 * _pixel_noise(rng, (len(u), 3))


# ----------------------------------------------------------------------------------------------------------
# Saliency


def render_saliency(rng, objects, size):
    """A salient-object detector's guess: blurred, noisy object masks, sometimes missing or over-covering."""
    strength = np.zeros((size, size), np.float32)
    union = np.zeros((size, size), bool)
    for body in objects:
        missed = rng.uniform() < MISSED_OBJECT_PROB
        strength[body] = rng.uniform(5, 35) if missed else rng.uniform(220, 240)
        union |= body
    if rng.uniform() < FALSE_BLOB_PROB:
        _add_false_blob(rng, strength, union)
    saliency = cv2.GaussianBlur(strength, (0, 0), sigmaX=rng.uniform(1.5, 3.0))
    saliency += 8.0 * _smooth_noise(rng, size, cells=8)[..., 0] + 4.0 * _pixel_noise(rng, saliency.shape)
    return np.clip(np.rint(saliency), 0, 255).astype(np.uint8)


def _add_false_blob(rng, strength, union):
    """Mark a background region as salient (detectors often fire on clutter)."""
    size = strength.shape[0]
    for _ in range(20):
        x, y = rng.integers(0, size, size=2)
        if not union[y, x]:
            axes = tuple(int(a) for a in rng.uniform(7, 16, size=2))
            blob = np.zeros((size, size), np.uint8)
            cv2.ellipse(blob, (int(x), int(y)), axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
            strength[blob.astype(bool) & ~union] = rng.uniform(150, 230)
            return


# ----------------------------------------------------------------------------------------------------------
# One image


def render_sample(seed, index, first_class, size, version=GENERATOR_VERSION, draw=("body", "part"), count=None,
                  whole_objects=False):
    """Everything for image ``index``: RGB image, label map, part mask, saliency map and its object classes.

    For measuring how much class evidence each region carries (:mod:`utils.demo.evidence`), ``draw`` can
    leave one out: without ``"part"`` the part is painted as body; without ``"body"`` the body takes version
    1's class-free colour. ``count`` fixes the number of objects, ``whole_objects`` keeps version 4's objects
    inside the frame. Every other draw stays the same.
    """
    rng = _image_rng(seed, index)
    drawn_count = int(rng.choice(len(OBJECT_COUNT_PROBS), p=OBJECT_COUNT_PROBS)) + 1
    count = drawn_count if count is None else count
    classes = [first_class] + [int(c) for c in rng.choice(DEMO_CLASSES, size=count - 1)]
    image = render_background(rng, size, version)
    label = np.zeros((size, size), np.uint8)
    parts = np.zeros((size, size), np.uint8)
    placed = place_objects(rng, size, count, version, whole_objects)
    classes = classes[: len(placed)]  # objects that found no room are dropped
    if version == 1 and set(draw) != {"body", "part"}:
        raise ValueError("leaving out a region's evidence needs generator version 2 or later")
    hue_labels = set()
    for class_id, (geometry, body, part, radius) in zip(classes, placed, strict=True):
        colour = body_colour(rng, class_id, version)
        hue = colorsys.rgb_to_hsv(*(colour / 255.0))[0]
        hue_labels.add(HUE_LABEL_IDS[int(hue * HUE_BINS) % HUE_BINS])
        part_rng = rng
        if version > 1:  # separate streams, so leaving a region out changes no other draw
            body_seed, part_seed = (int(x) for x in rng.integers(2**32, size=2))
            part_rng = np.random.default_rng(part_seed)
            if "body" not in draw:
                colour = body_colour(np.random.default_rng(body_seed), class_id, version=1)
        paint_body(rng, image, body, radius, colour)
        if "part" in draw:
            paint_part(part_rng, image, part, geometry, class_id)
        # Later objects are painted on top; each one's outline becomes a 1-px ignore band, like VOC's.
        label[body] = class_id + 1
        label[_inner_edge(body)] = IGNORE_LABEL
        parts[body] = BODY
        parts[part] = PART
    saliency = render_saliency(rng, [body for _, body, _, _ in placed], size)
    return {
        "image": np.clip(np.rint(image), 0, 255).astype(np.uint8),
        "label": label,
        "parts": parts,
        "saliency": saliency,
        "classes": classes,
        "hue_labels": sorted(hue_labels),
    }


def _save_grey_png(path, array):
    return atomic_write(path, lambda tmp: Image.fromarray(array, mode="L").save(tmp, format="PNG"))


def _save_jpeg(path, array):
    image = Image.fromarray(array, mode="RGB")
    return atomic_write(path, lambda tmp: image.save(tmp, format="JPEG", quality=JPEG_QUALITY))


def write_sample(out_dir, image_id, sample):
    _save_jpeg(out_dir / IMAGE_DIR / f"{image_id}.jpg", sample["image"])
    save_label_png(out_dir / GT_DIR / f"{image_id}.png", sample["label"])
    _save_grey_png(out_dir / SALIENCY_DIR / f"{image_id}.png", sample["saliency"])
    _save_grey_png(out_dir / PART_DIR / f"{image_id}.png", sample["parts"])


# ----------------------------------------------------------------------------------------------------------
# The dataset


PER_IMAGE_FILES = ((IMAGE_DIR, ".jpg"), (GT_DIR, ".png"), (SALIENCY_DIR, ".png"), (PART_DIR, ".png"))
OWN_ENTRIES = {IMAGE_DIR, GT_DIR, SALIENCY_DIR, PART_DIR, "ImageSets", LIST_DIR, META_NAME, README_NAME}

README_TEXT = """\
SYNTHETIC demo dataset in PASCAL VOC 2012 layout (made by utils/demo/data.py; not real VOC data).

Each object is a large body whose colour only hints at its class, plus a small class-specific part
(colour + pattern) at one end of it: image-level labels are easy to learn from the part alone, while the
segmentation ground truth covers the whole object. Backgrounds are greyish and carry no class evidence.

JPEGImages/<id>.jpg               RGB images
SegmentationClassAug/<id>.png     palette PNG labels: 0 background, c+1 for 0-based VOC class c,
                                  255 ignore (a 1-px band on each object's outline)
saliency_map/<id>.png             single-channel 0..255 pseudo salient-object-detector output (salient iff > 50)
PartMasks/<id>.png                single-channel: 0 background, 1 object body, 2 discriminative part (demo-only extra)
ImageSets/Segmentation/*.txt      id lists: train_aug, train (first images of train_aug), val (disjoint)
lists/*_cls.txt                   "<id> <c1> <c2> ..." image-level labels derived from the label maps
demo_meta.json                    generator version, seed, counts, image size and classes
"""


def _params(seed, num_train_aug, num_train, num_val, size, version=GENERATOR_VERSION, hue_labels=False):
    params = {"version": version, "seed": seed, "num_train_aug": num_train_aug, "num_train": num_train,
              "num_val": num_val, "size": size}
    if hue_labels:  # only when set, so datasets made before the option still match
        params["hue_labels"] = True
    return params


def _check_params(params):
    if params["version"] not in VERSIONS:
        raise ValueError(f"generator version must be one of {VERSIONS}, got {params['version']}")
    if params.get("hue_labels") and params["version"] == 1:
        raise ValueError("hue labels need generator version 2 or later (version 1's bodies share one colour)")
    if params["size"] < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE} px (the objects must fit in it), got {params['size']}")
    if params["num_train_aug"] < 1 or params["num_val"] < 1:
        raise ValueError("num_train_aug and num_val must be >= 1")
    if not 1 <= params["num_train"] <= params["num_train_aug"]:
        limit, got = params["num_train_aug"], params["num_train"]
        raise ValueError(f"num_train must be in 1..num_train_aug ({limit}), got {got}")


def _split_ids(params):
    train_aug = image_ids(params["num_train_aug"])
    val = image_ids(params["num_val"], start=params["num_train_aug"] + 1)
    return {"train_aug": train_aug, "train": train_aug[: params["num_train"]], "val": val}


def complete_meta(out_dir, params):
    """The stored meta when ``out_dir`` holds a finished dataset made with ``params``, else None."""
    out_dir = Path(out_dir)
    try:
        meta = json.loads((out_dir / META_NAME).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("params") != params:
        return None
    splits = _split_ids(params)
    if not all((out_dir / SPLIT_DIR / f"{name}.txt").is_file() for name in splits):
        return None
    for image_id in splits["train_aug"] + splits["val"]:
        if not all((out_dir / folder / f"{image_id}{suffix}").is_file() for folder, suffix in PER_IMAGE_FILES):
            return None
    return meta


def _check_ours(out_dir):
    """Refuse to write into a folder holding anything this generator did not make (e.g. a real VOC copy)."""
    if not out_dir.exists():
        return
    for entry in out_dir.iterdir():
        if entry.name not in OWN_ENTRIES:
            raise DataError(f"{out_dir} holds {entry.name}, which the demo generator did not write; use another --out")
    for folder, _ in PER_IMAGE_FILES:
        for path in (out_dir / folder).glob("*") if (out_dir / folder).is_dir() else ():
            if not path.name.lstrip(".").startswith(ID_PREFIX):
                raise DataError(f"{path} is not a demo file; refusing to mix the demo data into another dataset")


def _remove_stale(out_dir, wanted_ids):
    """Drop images of an earlier, larger run: lists derived from the label folder would pick them up."""
    wanted = set(wanted_ids)
    for folder, _ in PER_IMAGE_FILES:
        if (out_dir / folder).is_dir():
            for path in (out_dir / folder).glob(f"*{ID_PREFIX}*"):
                if path.stem not in wanted:
                    path.unlink()


def _write_id_list(path, ids):
    return atomic_write(path, lambda tmp: Path(tmp).write_text("".join(f"{image_id}\n" for image_id in ids)))


def generate(out_dir, seed=0, num_train_aug=400, num_train=100, num_val=100, size=None, force=False,
             version=GENERATOR_VERSION, hue_labels=False):
    """Write the demo dataset into ``out_dir`` and return its meta (also saved as ``demo_meta.json``).

    ``size`` defaults to the version's image side (``DEFAULT_SIZE``). A folder that already holds a complete
    dataset with the same parameters is left as it is, unless ``force``. ``hue_labels`` adds each body's hue
    bin (``HUE_LABEL_IDS``) to the image-level lists: a pretext for a stand-in pre-training set, not for the
    demo's own data (the images are the same either way).
    """
    out_dir = Path(out_dir)
    size = DEFAULT_SIZE.get(version, 0) if size is None else size
    params = _params(seed, num_train_aug, num_train, num_val, size, version, hue_labels)
    _check_params(params)
    if not force and (meta := complete_meta(out_dir, params)) is not None:
        return meta
    _check_ours(out_dir)
    (out_dir / META_NAME).unlink(missing_ok=True)  # an interrupted run must not look complete
    splits = _split_ids(params)
    _remove_stale(out_dir, splits["train_aug"] + splits["val"])

    images_per_class, extra_labels = {}, {}
    index = 0
    for split_key, split in enumerate(("train_aug", "val")):
        counts = {c: 0 for c in DEMO_CLASSES}
        plan = class_plan(seed, split_key, len(splits[split]))
        for image_id, first_class in zip(splits[split], plan, strict=True):
            index += 1
            sample = render_sample(seed, index, first_class, size, version)
            write_sample(out_dir, image_id, sample)
            extra_labels[image_id] = sample["hue_labels"]
            for class_id in set(sample["classes"]):
                counts[class_id] += 1
        images_per_class[split] = {CLASS_NAMES[c]: n for c, n in counts.items()}

    for name, ids in splits.items():
        _write_id_list(out_dir / SPLIT_DIR / f"{name}.txt", ids)
    lists = derive_cls_lists(out_dir)
    if hue_labels:
        for path in lists.values():
            write_cls_list(path, [(i, classes + extra_labels[i]) for i, classes in read_list(path)])
    atomic_write(out_dir / README_NAME, lambda tmp: Path(tmp).write_text(README_TEXT))
    meta = {
        "generator": "utils.demo.data",
        "synthetic": True,
        "params": params,
        "counts": {name: len(ids) for name, ids in splits.items()},
        "size": size,
        "class_ids": list(DEMO_CLASSES),
        "class_names": [CLASS_NAMES[c] for c in DEMO_CLASSES],
        "part_patterns": {CLASS_NAMES[c]: PART_STYLES[c][0] for c in DEMO_CLASSES},
        "body_hue_windows": ({CLASS_NAMES[c]: [round(h, 4) for h in body_hue_window(c, version)] for c in DEMO_CLASSES}
                             if version > 1 else None),
        "cut_by_frame": ({"probability": TRUNCATED_PROB, "visible_share": list(TRUNCATED_VISIBLE)}
                         if version >= 4 else None),
        "images_per_class": images_per_class,
        "part_values": {"background": 0, "body": BODY, "part": PART},
    }
    save_json(out_dir / META_NAME, meta)
    return meta


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a small synthetic dataset in VOC 2012 layout (see module doc).")
    parser.add_argument("--out", required=True, help="output folder (the VOC root to pass to the other tools)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train-aug", type=int, default=400)
    parser.add_argument("--num-train", type=int, default=100, help="the first N train_aug images form train")
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--size", type=int, default=None,
                        help=f"square image side in px (>= {MIN_SIZE}; default {DEFAULT_SIZE[GENERATOR_VERSION]}, "
                             f"version 1: {DEFAULT_SIZE[1]})")
    parser.add_argument("--version", type=int, default=GENERATOR_VERSION, choices=VERSIONS,
                        help="4: large bodies with weaker, overlapping class evidence than their part, some cut "
                             "by the frame (default); 3: the same, every object whole; 2: thinner bodies with "
                             "weaker evidence; 1: the first demo, whose bodies carry none (1-3 kept for the "
                             "record, docs/demo.md)")
    parser.add_argument("--hue-labels", action="store_true",
                        help="add each body's hue bin (12 bins, as VOC ids the demo classes leave free) to the "
                             "image-level lists: a richer pretext for a stand-in pre-training set (docs/demo.md)")
    parser.add_argument("--force", action="store_true", help="regenerate even if a matching dataset exists")
    args = parser.parse_args(argv)
    if args.size is None:
        args.size = DEFAULT_SIZE[args.version]
    params = _params(args.seed, args.num_train_aug, args.num_train, args.num_val, args.size, args.version,
                     args.hue_labels)
    if not args.force and complete_meta(args.out, params) is not None:
        print(f"demo data: {args.out} already holds this dataset (seed {args.seed}); skipped (--force regenerates)")
        return
    start = time.perf_counter()
    try:
        meta = generate(args.out, args.seed, args.num_train_aug, args.num_train, args.num_val, args.size, force=True,
                        version=args.version, hue_labels=args.hue_labels)
    except (ValueError, DataError) as error:
        parser.error(str(error))
    counts = meta["counts"]
    print(f"demo data: wrote {counts['train_aug']} train_aug (first {counts['train']} = train) + {counts['val']} val "
          f"images, {args.size} px, {len(DEMO_CLASSES)} classes, version {args.version}, seed {args.seed} "
          f"-> {args.out} "
          f"in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
