"""YAML configs with command-line overrides.

A config is a nested dict read from YAML. ``--set a.b=value`` (repeatable) overrides one leaf; the value is
parsed as YAML, so ``--set train.lr=0.01``, ``--set model.drs=0.55`` and ``--set data.scales=[256,320]`` work.
A config may name a ``base:`` file (relative to itself) whose values it overrides.
"""

import copy
from pathlib import Path

import yaml

from utils.errors import UserError


class ConfigError(UserError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping (PyYAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                continue  # PyYAML's own check reports an unhashable key
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse(text):
    """YAML text to Python values, refusing repeated keys (config files and --set values alike)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def merge(base, override):
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load(path, overrides=()):
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        config = _parse(path.read_text()) or {}
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        raise ConfigError(f"{path} is not valid YAML{at}: {getattr(error, 'problem', None) or error}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must hold sections (a YAML mapping), not a {type(config).__name__}")
    if "base" in config:
        config = merge(load(path.parent / config.pop("base")), config)
    for item in overrides:
        set_value(config, item)
    return config


NUMBER_OR_NAME = {"model.drs"}  # "learnable", "relu" or a fixed delta


def set_value(config, assignment):
    """Apply one ``dotted.key=value`` override in place; the key must already exist."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} is not of the form key=value")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    node = config
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            raise ConfigError(f"unknown config section {dotted!r}")
        node = node[key]
    if keys[-1] not in node:
        raise ConfigError(f"unknown config key {dotted!r} (known here: {', '.join(sorted(node))})")
    try:
        value = _parse(raw)
    except yaml.YAMLError:
        raise ConfigError(f"--set {assignment}: the value is not valid YAML") from None
    old = node[keys[-1]]
    if _kind(old) == "a number" and isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        except ValueError:
            pass
    if isinstance(old, dict):
        raise ConfigError(f"--set {assignment}: {dotted} is a section; set one of its keys "
                          f"({', '.join(f'{dotted}.{k}' for k in old)})")
    if not (dotted in NUMBER_OR_NAME and _kind(value) in ("a number", "a string")) and not _same_kind(old, value):
        raise ConfigError(f"--set {assignment}: {dotted} holds {_kind(old)} ({old!r}), not {_kind(value)}")
    node[keys[-1]] = value
    return config


def _kind(value):
    if isinstance(value, dict):
        return "a section"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    return "null" if value is None else "a string"


def _same_kind(old, new):
    """Whether an override may replace ``old`` by ``new``: sections, numbers, booleans and lists keep their kind
    (a list may become null and back); strings and nulls take anything but a section (``model.drs`` is
    ``learnable`` or a number)."""
    if isinstance(old, dict) or isinstance(new, dict):
        return isinstance(old, dict) and isinstance(new, dict)
    if old is None or isinstance(old, str):
        return True
    if isinstance(old, list):
        return new is None or isinstance(new, list)
    return _kind(old) == _kind(new)


# Counts every trainer's config may hold, with their least allowed value; load_run checks those present, so a
# bad value is one line naming its key before anything is built.
COUNTS = {"train.batch_size": 1, "train.epochs": 1, "train.iterations": 1, "train.save_every": 1,
          "train.accumulation": 1, "train.lr_step": 1, "train.seed": 0, "output.log_every": 1, "val.every": 0,
          "data.num_workers": 0}
AMP_CHOICES = (None, "bf16", "fp16")


def check_counts(config):
    """Refuse a count of :data:`COUNTS` that is not an integer or is below its least value, and an unknown
    ``train.amp``."""
    for dotted, least in COUNTS.items():
        section, key = dotted.split(".")
        if key not in config.get(section, {}):
            continue
        value = config[section][key]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{dotted} must be an integer of at least {least}, not {value!r}")
    amp = config.get("train", {}).get("amp")
    if amp not in AMP_CHOICES:
        raise ConfigError(f"train.amp must be bf16, fp16 or null, not {amp!r}")


def load_run(args):
    """A trainer's config: ``--config`` with ``--set`` applied, then ``--voc-root``, ``--out`` and (where the
    trainer has it) ``--labels`` written into ``data.voc_root``, ``output.dir`` and ``data.labels``; a VOC root
    is required and the counts are checked (:func:`check_counts`)."""
    config = load(args.config, args.set)
    if args.voc_root:
        config["data"]["voc_root"] = args.voc_root
    if args.out:
        config["output"]["dir"] = args.out
    if getattr(args, "labels", None):
        config["data"]["labels"] = args.labels
    if not config["data"]["voc_root"]:
        raise ConfigError("no VOC root: pass --voc-root or set data.voc_root")
    check_counts(config)
    return config


def dump(config):
    return yaml.safe_dump(config, sort_keys=False)
