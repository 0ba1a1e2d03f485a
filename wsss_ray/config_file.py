"""Configs as YAML files with dotted overrides: ``wsss-ray run configs/voc_lpcam.yaml -o lpcam.tau=0.25``.

A file holds any part of :class:`~wsss_ray.config.PipelineConfig`, section by section
(``dataset:``, ``model:``, ``train:``, ``cam:``, ``lpcam:``, ...); what it leaves out keeps the
dataclasses' defaults, or those of the file named by ``base:`` (a path relative to the file, or
the name of a shipped preset under ``configs/``). ``-o KEY=VALUE`` sets one dotted key, its value
read as YAML (``-o cam.scales=[1.0,0.5]``, ``-o lpcam.fallback=best_one``). Every key, type and
range is checked before any work: a mistake raises :class:`ConfigError`, which the command line
turns into exit code 2 with the key named and the valid ones listed.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from wsss_ray.config import _NESTED, PipelineConfig, from_dict, to_dict

PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs"
SCALARS = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,), "tuple": (list, tuple)}


class ConfigError(SystemExit):
    """A config file, flag or override that names an unknown key, a wrong type or a bad value.
    A ``SystemExit`` with code 2 (a usage error) whose text names the key; entry points print
    the text (``wsss_ray.cli.main``)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    @property
    def code(self) -> int:
        return 2

    def __str__(self) -> str:
        return self.message


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name_or_path: str, relative_to: Path | None = None) -> Path:
    """A file path as given (or relative to the file that names it), else ``configs/<name>.yaml``."""
    given = Path(name_or_path)
    for candidate in ([relative_to / given] if relative_to and not given.is_absolute() else []) + [given]:
        if candidate.is_file():
            return candidate
    shipped = PRESETS_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(f"config {name_or_path!r}: no such file, nor a preset ({', '.join(preset_names())})")


def read_layers(path: Path, seen: tuple = ()) -> list[dict]:
    """The file's mapping after those of its ``base:`` chain (the base first)."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: base chain loops back on itself")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file is a mapping of sections, not {type(data).__name__}")
    base = data.pop("base", None)
    below = read_layers(preset_path(str(base), path.parent), seen + (path.resolve(),)) if base else []
    return below + [data]


def merge(into: dict, layer: dict) -> dict:
    """Nested dict update: a section in ``layer`` replaces only the keys it names."""
    out = dict(into)
    for key, value in layer.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def parse_override(text: str) -> dict:
    """``"lpcam.tau=0.25"`` -> ``{"lpcam": {"tau": 0.25}}`` (the value read as YAML)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not KEY=VALUE (e.g. lpcam.tau=0.25)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    for part in reversed(key.strip().split(".")):
        parsed = {part: parsed}
    return parsed


def field_kind(f: dataclasses.Field) -> str:
    return f.type if isinstance(f.type, str) else f.type.__name__


def checked(cls, data: dict, where: str = "") -> dict:
    """``data`` with every key a field of ``cls`` and every value of the field's type (a comma
    list given as one string, ``methods: cam,lpcam``, becomes a tuple)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for key, value in data.items():
        name = f"{where}{key}"
        if key not in fields:
            raise ConfigError(f"unknown key {name!r}; valid keys{' of ' + where[:-1] if where else ''}: "
                              f"{', '.join(sorted(fields))}")
        kind = field_kind(fields[key])
        if kind in _NESTED:
            if not isinstance(value, dict):
                raise ConfigError(f"{name} is a section ({', '.join(f.name for f in dataclasses.fields(_NESTED[kind]))}), "
                                  f"not {value!r}")
            value = checked(_NESTED[kind], value, name + ".")
        elif kind == "tuple" and isinstance(value, str):
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        elif kind == "float" and isinstance(value, str):
            value = as_float(name, value)     # YAML reads 1e-3 (no dot) as a string
        elif kind in SCALARS and (not isinstance(value, SCALARS[kind]) or (kind != "bool" and isinstance(value, bool))):
            raise ConfigError(f"{name}={value!r}: expected {kind}, got {type(value).__name__}")
        out[key] = value
    return out


def as_float(name: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r}: expected float, got str") from None


def build(data: dict) -> PipelineConfig:
    """A mapping -> the config; the dataclasses' own range checks become ConfigErrors."""
    try:
        return from_dict(PipelineConfig, checked(PipelineConfig, data))
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None


def load_config(path: str | None = None, overrides: tuple[str, ...] = (), base: PipelineConfig | None = None,
                run_dir: str = "") -> PipelineConfig:
    """The resolved config: ``base`` (or the defaults), then the file's ``base:`` chain and the
    file, then each override, then ``run_dir`` when given."""
    data = to_dict(base) if base is not None else {}
    for layer in read_layers(preset_path(path)) if path else []:
        data = merge(data, layer)
    for text in overrides:
        data = merge(data, parse_override(text))
    if run_dir:
        data["run_dir"] = run_dir
    return build(data)


class _Dumper(yaml.SafeDumper):
    """Sections as blocks, lists on one line: the form the shipped presets are written in."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def to_yaml(cfg: PipelineConfig) -> str:
    """The whole config as YAML: loads back (``load_config`` of the text) to an equal config."""
    return yaml.dump(_plain(to_dict(cfg)), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config mappings (``to_dict`` form)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, f"{prefix}{key}.")
        elif _plain(a) != _plain(b):
            out.append(f"{prefix}{key}")
    return out


# What a sweep can vary without a new classifier: LPCAM's post-processing (one feature pass, then
# prototypes and maps per trial) and ReCAM's training (one TorchTrainer per trial).
SWEEPABLE = {"lpcam": ("tau", "k", "mu_f", "mu_b_low", "mu_b_high"), "recam_train": ("recam_lambda", "lr_fc2")}


def parse_space(texts: tuple[str, ...] = (), path: str = "") -> tuple[str, dict]:
    """``("lpcam.tau=[0.1,0.25]", "lpcam.mu_f=0.5..0.97")`` (and/or a YAML file of such dotted
    keys) -> ``("lpcam", {"tau": [0.1, 0.25], "mu_f": (0.5, 0.97)})``: a list is a choice (a grid's
    values), ``lo..hi`` a range for random or optuna search. All keys of one section; each value
    checked against the field it sweeps."""
    items = []
    if path:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a sweep space is a mapping of dotted keys to values")
        items += [(str(k), v) for k, v in data.items()]
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep:
            raise ConfigError(f"sweep space {text!r} is not KEY=VALUES (e.g. lpcam.tau=[0.1,0.25] or lpcam.mu_f=0.5..0.9)")
        items.append((key.strip(), value.strip()))
    if not items:
        raise ConfigError("a sweep needs a space: -s lpcam.tau=[0.1,0.25] (or --space-file FILE)")
    space, sections = {}, set()
    for key, value in items:
        section, _, knob = key.partition(".")
        if knob not in SWEEPABLE.get(section, ()):
            valid = ", ".join(f"{s}.{k}" for s, knobs in SWEEPABLE.items() for k in knobs)
            raise ConfigError(f"{key!r} cannot be swept; sweepable keys: {valid}")
        sections.add(section)
        space[knob] = sweep_values(key, value)
    if len(sections) > 1:
        raise ConfigError(f"one sweep varies one stage: {', '.join(sorted(sections))} are separate sweeps")
    return sections.pop(), space


def sweep_values(key: str, value):
    """A list of values (typed by the field) or a (lo, hi) range."""
    if isinstance(value, str) and ".." in value:
        lo, _, hi = value.partition("..")
        bounds = tuple(parse_scalar(key, v) for v in (lo, hi))
        if not bounds[0] < bounds[1]:
            raise ConfigError(f"{key}={value}: a range needs lo < hi")
        return bounds
    values = yaml.safe_load(value) if isinstance(value, str) else value
    values = values if isinstance(values, list) else [values]
    return [parse_scalar(key, v) for v in values]


def parse_scalar(key: str, value):
    """One value of a swept key, checked by loading it into the config as an override."""
    value = yaml.safe_load(value) if isinstance(value, str) else value
    section, _, knob = key.partition(".")
    cfg = load_config(None, (f"{key}={json.dumps(value)}",))
    return getattr(getattr(cfg, section), knob)
