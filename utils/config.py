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
    config = yaml.safe_load(path.read_text()) or {}
    if "base" in config:
        config = merge(load(path.parent / config.pop("base")), config)
    for item in overrides:
        set_value(config, item)
    return config


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
    node[keys[-1]] = yaml.safe_load(raw)
    return config


def dump(config):
    return yaml.safe_dump(config, sort_keys=False)
