"""Run configuration: dataclasses, YAML loading and `--set a.b=v` overrides, validated up front.

Why up front: a typo in a config should cost one second, not an hour of training on a default
value. Every mistake becomes a one-line `UserError` that names the key as the user wrote it, with a
"did you mean" from difflib.

Two spellings of the same run are accepted and normalised to a list of stages:

    method: {name: simclr, temperature: 0.2}     # one stage (named after its method)
    train: {epochs: 200, lr: 0.6}

    train: {batch_size: 128}                      # pipeline: top-level `train` = defaults for every stage
    stages:
      - {name: rotnet, method: rotnet, train: {epochs: 200}}
      - {name: cluster, method: {name: lsd_c, k: 10}, train: {epochs: 220}}

This module imports only the standard library and PyYAML: the CLI validates a config before torch
is even imported.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from labelless.errors import UserError

OPTIMIZERS = ("sgd", "adam", "adamw", "lars")
SCHEDULES = ("constant", "cosine", "step", "multistep")
DEVICES = ("auto", "cpu", "cuda")
_STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # used in file names
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass
class TrainConfig:
    """How one stage is optimised. Epochs are 0-based everywhere (schedule, logs, `on_epoch_start`)."""

    epochs: int = 100
    min_steps: int | None = None  # raise epochs on a small dataset to this many steps (pipeline.with_min_steps)
    batch_size: int = 256  # global batch: under DDP each of W ranks takes batch_size / W
    optimizer: str = "sgd"  # sgd | adam | adamw | lars
    lr: float = 0.05  # peak learning rate (after warm-up); a group's `lr_scale` multiplies it
    weight_decay: float = 5e-4
    momentum: float = 0.9  # sgd and lars
    nesterov: bool = False  # sgd only
    betas: tuple[float, float] = (0.9, 0.999)  # adam and adamw
    lars_eta: float = 0.001  # LARS trust coefficient η (You et al. 2017; SimCLR's value)
    schedule: str = "cosine"  # constant | cosine | step | multistep
    warmup_epochs: float = 0.0  # linear warm-up from 0, per step; may be fractional
    min_lr_factor: float = 0.0  # cosine ends at lr · min_lr_factor
    milestones: list[int] = field(default_factory=list)  # multistep: lr ·= gamma at each of these epochs
    gamma: float = 0.1  # step and multistep decay factor
    step_start: int = 0  # step: lr · gamma^⌊(epoch − step_start)/step_size⌋ for epoch ≥ step_start
    step_size: int = 30
    restart_every: int | None = None  # restart the schedule every N epochs (Super-AND's rounds)
    exclude_norm_bias_from_weight_decay: bool = True  # 1-d parameters (biases, norm scales) get wd 0
    amp: bool = True  # bf16 autocast, CUDA only
    channels_last: bool = True  # CUDA only
    compile: bool = False  # torch.compile the training step, CUDA only
    ema_decay: float | None = None  # keep an EMA of the weights; the EMA is what gets evaluated
    checkpoint_every: int = 5  # epochs; a checkpoint is also written after the last epoch
    drop_last: bool = True
    grad_clip: float | None = None  # max global gradient norm
    log_every: int = 50  # steps between progress/TensorBoard updates and the NaN check
    find_unused_parameters: bool = False  # DDP: set when some parameters get no gradient in a step


@dataclass
class DatasetConfig:
    name: str  # the CLI's dataset name: cifar10, mnist, digits, folder:PATH, …
    split: str | None = None  # training split; None → the dataset's default (digits: all)
    eval_split: str | None = None  # split to score; None → the caller's default (test where it exists)
    root: str | None = None  # data root; None → $LABELLESS_DATA or the project's data folder
    options: dict[str, Any] = field(default_factory=dict)  # passed to the dataset loader


@dataclass
class StageConfig:
    name: str
    method: dict[str, Any]  # {'name': registry name, **constructor parameters}
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class RunConfig:
    dataset: DatasetConfig
    stages: list[StageConfig]
    name: str = "run"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    k: int | None = None  # number of clusters; None → the dataset's class count
    labelled_fraction: float | None = None  # weakly-supervised mode (labels used are recorded)
    notes: Any = None  # free text or mapping, kept with the run


# Keys under which a section has a known schema; None marks a free mapping (method parameters, options).
_SECTIONS: dict[type, dict[str, type | None]] = {
    RunConfig: {"dataset": DatasetConfig, "notes": None},
    DatasetConfig: {"options": None},
    StageConfig: {"method": None, "train": TrainConfig},
    TrainConfig: {},
}
_TOP_LEVEL_KEYS = [f.name for f in fields(RunConfig)] + ["method", "train"]


def load_config(source: str | Path | dict, overrides: Sequence[str] = ()) -> RunConfig:
    """A validated RunConfig from a YAML file (or an already-parsed mapping) plus `a.b=v` overrides.

    Overrides address the normalised config: `seed=3`, `dataset.root=/data`, `train.lr=0.1` (every
    stage), `method.temperature=0.5` (single-stage runs), `stages.1.train.epochs=5` or
    `stages.cluster.train.epochs=5`. Values are parsed as YAML (`0.1`, `true`, `null`, `[120, 160]`).
    """
    raw, default_name = _read(source)
    raw.setdefault("name", default_name)
    try:
        normalised, single = _normalise(raw)
    except UserError as error:  # the file's own structure (before any override): name the file
        if isinstance(source, dict):
            raise
        raise UserError(f"config file {source}: {error}") from None
    for text in overrides:
        _apply_override(normalised, text)
    return _build_run(normalised, single)


def method_label(stages: Sequence[StageConfig]) -> str:
    """What a result record calls a run's method: the method's name for one stage,
    `pipeline:A+B+C` (the stages' method names) for several."""
    if len(stages) == 1:
        return stages[0].method["name"]
    return "pipeline:" + "+".join(stage.method["name"] for stage in stages)


def to_dict(config: RunConfig) -> dict:
    """The config as plain YAML-ready data; one-stage runs use the short `method:`/`train:` spelling."""
    data = _plain(dataclasses.asdict(config))
    stages = data.pop("stages")
    ordered = {key: data[key] for key in ("name", "seed", "device", "k", "dataset")}
    if len(stages) == 1 and stages[0]["name"] == stages[0]["method"]["name"]:
        ordered["method"], ordered["train"] = stages[0]["method"], stages[0]["train"]
    else:
        ordered["stages"] = stages
    ordered["labelled_fraction"] = data["labelled_fraction"]
    ordered["notes"] = data["notes"]
    return ordered


def to_yaml(config: RunConfig) -> str:
    """YAML text that `load_config` reads back into an equal RunConfig."""
    return yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=None, allow_unicode=True)


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(to_yaml(config), encoding="utf-8")


def _read(source: str | Path | dict) -> tuple[dict, str]:
    if isinstance(source, dict):
        return copy.deepcopy(source), "run"
    path = Path(source)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"config file {path} is not valid YAML{where}: {getattr(error, 'problem', error)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"config file {path} must hold a mapping (key: value lines), got {type(raw).__name__}")
    return raw, path.stem


def _normalise(raw: dict) -> tuple[dict, bool]:
    """Rewrite either spelling into `stages: [...]`; returns it and whether it was the one-stage spelling."""
    for key in raw:
        if key not in _TOP_LEVEL_KEYS:
            raise _unknown(key, _TOP_LEVEL_KEYS)
    if isinstance(raw.get("dataset"), str):  # `dataset: cifar10` shorthand, before overrides address its keys
        raw["dataset"] = {"name": raw["dataset"]}
    shared_train = _mapping(raw.pop("train", None), "train")
    if "stages" in raw:
        if "method" in raw:
            raise UserError("give either `method:` (one stage) or `stages:` (a pipeline), not both")
        stages = raw["stages"]
        if not isinstance(stages, list) or not stages:
            raise UserError("config key 'stages' must be a non-empty list of stages")
        raw["stages"] = [_normalise_stage(stage, shared_train, f"stages.{i}") for i, stage in enumerate(stages)]
        return raw, False
    if "method" not in raw:
        raise UserError("config has no method: add `method: NAME` (one stage) or `stages:` (a pipeline)")
    method = _method_dict(raw.pop("method"), "method")
    raw["stages"] = [{"name": method["name"], "method": method, "train": shared_train}]
    return raw, True


def _normalise_stage(stage: Any, shared_train: dict, key: str) -> dict:
    stage = dict(_mapping(stage, key))
    if "method" not in stage:
        raise UserError(f"config key '{key}' has no method: add `method: NAME` to the stage")
    stage["method"] = _method_dict(stage["method"], f"{key}.method")
    stage["train"] = {**shared_train, **_mapping(stage.get("train"), f"{key}.train")}
    stage.setdefault("name", stage["method"]["name"])
    return stage


def _method_dict(value: Any, key: str) -> dict:
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return dict(value)
    raise UserError(f"config key '{key}' must be a method name or a mapping with `name:`, got {value!r}")


def _mapping(value: Any, key: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"config key '{key}' must be a mapping, got {value!r}")
    return value


def _apply_override(raw: dict, text: str) -> None:
    key, equals, value_text = text.partition("=")
    key = key.strip()
    if not equals or not key:
        raise UserError(f"override '{text}' is not KEY=VALUE (e.g. train.lr=0.1)")
    try:
        value = yaml.safe_load(value_text)
    except yaml.YAMLError:
        raise UserError(f"override '{text}': the value is not valid YAML") from None
    parts = key.split(".")
    stages = raw["stages"]
    if parts[0] in ("train", "method"):  # the one-stage spelling: every stage's train / the only method
        if parts[0] == "method" and len(stages) > 1:
            raise UserError(f"override '{key}' is ambiguous in a {len(stages)}-stage pipeline: "
                            f"use stages.N.{key} or stages.NAME.{key}")
        for stage in stages:
            _set(stage, parts, value, key, StageConfig)
    elif parts[0] == "stages":
        if len(parts) < 3:
            raise UserError(f"override '{key}' must name a stage and a key, e.g. stages.0.train.epochs=5")
        _set(_find_stage(stages, parts[1], key), parts[2:], value, key, StageConfig)
    else:
        _set(raw, parts, value, key, RunConfig)


def _find_stage(stages: list[dict], ref: str, key: str) -> dict:
    """A stage by index (`stages.1`) or by name (`stages.cluster`)."""
    if ref.isdigit() and int(ref) < len(stages):
        return stages[int(ref)]
    for stage in stages:
        if stage.get("name") == ref:
            return stage
    names = [str(i) for i in range(len(stages))] + [str(s.get("name")) for s in stages]
    raise UserError(f"override '{key}': no stage '{ref}' (stages: {', '.join(names)})")


def _set(node: dict, parts: list[str], value: Any, shown: str, schema: type | None) -> None:
    """Set node[parts...] = value, checking each key against the schema of its section."""
    head, rest = parts[0], parts[1:]
    sections = _SECTIONS.get(schema, {}) if schema is not None else {}
    if schema is not None:
        known = [f.name for f in fields(schema)]
        if head not in known or head == "stages":
            done = shown.split(".")[: len(shown.split(".")) - len(parts)]
            addresses = [".".join(done + [k]) for k in known if k != "stages"]
            if not done and schema is RunConfig:  # the top level: name the sections too
                addresses += ["train.KEY (every stage)", "stages.N.method.KEY", "stages.N.train.KEY"]
            raise _unknown(".".join(done + [head]), addresses)
    if not rest:
        if schema is not None and head not in sections:  # a bad value is named as the user spelled its key,
            coerce(value, get_type_hints(schema)[head], shown)  # not as the stage copy it was written to
        node[head] = value
        return
    if schema is not None and head not in sections:
        raise UserError(f"config key '{shown.rsplit('.', len(rest))[0]}' is a value, not a section: "
                        f"set it with {shown.rsplit('.', len(rest))[0]}=VALUE")
    child = node.setdefault(head, {})
    if child is None:
        child = node[head] = {}
    if not isinstance(child, dict):
        raise UserError(f"override '{shown}': '{head}' holds {child!r}, not a mapping")
    _set(child, rest, value, shown, sections.get(head) if schema is not None else None)


def _unknown(key: str, known: Sequence[str]) -> UserError:
    match = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f" (did you mean '{match[0]}'?)" if match else f" (known: {', '.join(known)})"
    return UserError(f"unknown config key '{key}'{hint}")


def _build_run(raw: dict, single: bool) -> RunConfig:
    if raw.get("dataset") is None:
        raise UserError("config has no dataset: add `dataset: NAME` (e.g. cifar10, digits, folder:PATH)")
    if isinstance(raw["dataset"], str):  # `--set dataset=mnist` replaces the section
        raw["dataset"] = {"name": raw["dataset"]}
    dataset = _build(DatasetConfig, _mapping(raw["dataset"], "dataset"), "dataset.")
    stages = [_build_stage(stage, "" if single else f"stages.{i}.") for i, stage in enumerate(raw["stages"])]
    top = {key: value for key, value in raw.items() if key not in ("dataset", "stages")}
    run = _build(RunConfig, {**top, "dataset": dataset, "stages": stages}, "", skip=("dataset", "stages"))
    _validate_run(run)
    return run


def _build_stage(raw: dict, prefix: str) -> StageConfig:
    for key in raw:
        if key not in ("name", "method", "train"):
            # The one-stage spelling has no stage mapping of its own, so its keys live at top level.
            raise _unknown(prefix + key, [prefix + k for k in ("name", "method", "train")])
    name = coerce(raw["name"], str, prefix + "name")
    if not _STAGE_NAME.match(name):
        raise UserError(f"config key '{prefix}name' must be letters, digits, '_', '-' or '.', got {name!r}")
    train = _build(TrainConfig, _mapping(raw.get("train"), prefix + "train"), prefix + "train.")
    _validate_train(train, prefix + "train.")
    return StageConfig(name=name, method=_method_dict(raw["method"], prefix + "method"), train=train)


def _build(cls: type, raw: dict, prefix: str, skip: Sequence[str] = ()) -> Any:
    """cls(**raw) with unknown keys refused and every value coerced to its annotated type."""
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key in raw:
        if key not in names:
            raise _unknown(prefix + key, [prefix + n for n in names])
    missing = [f.name for f in fields(cls) if f.name not in raw
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"config key '{prefix}{missing[0]}' is required")
    values = {key: value if key in skip else coerce(value, hints[key], prefix + key) for key, value in raw.items()}
    return cls(**values)


def coerce(value: Any, hint: Any, key: str) -> Any:
    """`value` as type `hint` (the few shapes our dataclasses and method constructors use), or a
    UserError naming `key`."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [arg for arg in get_args(hint) if arg is not type(None)]
        return coerce(value, inner, key)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"config key '{key}' must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"config key '{key}' must be an integer, got {value!r}")
    if hint is float:
        return _as_float(value, key)
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"config key '{key}' must be text, got {value!r}")
    if origin in (list, Sequence):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{key}' must be a list, got {value!r}")
        (inner,) = get_args(hint)
        return [coerce(item, inner, f"{key}.{i}") for i, item in enumerate(value)]
    if origin is tuple:
        inner = get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(inner):
            raise UserError(f"config key '{key}' must be a list of {len(inner)} values, got {value!r}")
        return tuple(coerce(item, t, f"{key}.{i}") for i, (item, t) in enumerate(zip(value, inner)))
    if origin is dict or hint is dict:
        return dict(_mapping(value, key))
    raise TypeError(f"no coercion for {hint!r}")  # a programming error in this module, not the user's


def _as_float(value: Any, key: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        # PyYAML follows YAML 1.1, which reads `1e-3` (no dot) as a string: accept it as the number it means.
        try:
            return float(value)
        except ValueError:
            pass
    raise UserError(f"config key '{key}' must be a number, got {value!r}")


def _check(ok: bool, key: str, requirement: str, value: Any) -> None:
    if not ok:
        raise UserError(f"config key '{key}' must be {requirement}, got {value!r}")


def _choice(value: str, choices: Sequence[str], key: str) -> None:
    if value not in choices:
        match = difflib.get_close_matches(value, choices, n=1)
        hint = f" (did you mean '{match[0]}'?)" if match else ""
        raise UserError(f"config key '{key}' must be one of {', '.join(choices)}, got {value!r}{hint}")


def _validate_train(t: TrainConfig, p: str) -> None:
    _check(t.epochs >= 1, p + "epochs", "≥ 1", t.epochs)
    _check(t.batch_size >= 1, p + "batch_size", "≥ 1", t.batch_size)
    _check(t.min_steps is None or t.min_steps >= 1, p + "min_steps", "≥ 1 or null", t.min_steps)
    _check(t.min_steps is None or t.schedule in ("constant", "cosine"), p + "min_steps",
           "null with schedule step or multistep (their drops are set in epochs)", t.min_steps)
    _choice(t.optimizer, OPTIMIZERS, p + "optimizer")
    _check(t.lr > 0, p + "lr", "> 0", t.lr)
    _check(t.weight_decay >= 0, p + "weight_decay", "≥ 0", t.weight_decay)
    _check(0 <= t.momentum < 1, p + "momentum", "in [0, 1)", t.momentum)
    _check(not t.nesterov or t.momentum > 0, p + "nesterov", "false when momentum is 0", t.nesterov)
    _check(all(0 <= b < 1 for b in t.betas), p + "betas", "two values in [0, 1)", list(t.betas))
    _check(t.lars_eta > 0, p + "lars_eta", "> 0", t.lars_eta)
    _choice(t.schedule, SCHEDULES, p + "schedule")
    _check(0 <= t.warmup_epochs <= t.epochs, p + "warmup_epochs", f"in [0, epochs={t.epochs}]", t.warmup_epochs)
    _check(0 <= t.min_lr_factor <= 1, p + "min_lr_factor", "in [0, 1]", t.min_lr_factor)
    increasing = all(a < b for a, b in zip([0] + t.milestones, t.milestones))
    _check(increasing, p + "milestones", "increasing positive epochs", t.milestones)
    _check(t.schedule != "multistep" or bool(t.milestones), p + "milestones", "non-empty for schedule multistep",
           t.milestones)
    _check(t.gamma > 0, p + "gamma", "> 0", t.gamma)
    _check(t.step_start >= 0, p + "step_start", "≥ 0", t.step_start)
    _check(t.step_size >= 1, p + "step_size", "≥ 1", t.step_size)
    _check(t.restart_every is None or t.restart_every >= 1, p + "restart_every", "≥ 1 or null", t.restart_every)
    _check(t.ema_decay is None or 0 <= t.ema_decay < 1, p + "ema_decay", "in [0, 1) or null", t.ema_decay)
    _check(t.checkpoint_every >= 1, p + "checkpoint_every", "≥ 1", t.checkpoint_every)
    _check(t.grad_clip is None or t.grad_clip > 0, p + "grad_clip", "> 0 or null", t.grad_clip)
    _check(t.log_every >= 1, p + "log_every", "≥ 1", t.log_every)


def _validate_run(run: RunConfig) -> None:
    _check(run.seed >= 0, "seed", "≥ 0", run.seed)
    if not _DEVICE.match(run.device):
        _choice(run.device, DEVICES, "device")
    _check(run.k is None or run.k >= 2, "k", "≥ 2 or null", run.k)
    _check(run.labelled_fraction is None or 0 < run.labelled_fraction <= 1, "labelled_fraction", "in (0, 1] or null",
           run.labelled_fraction)
    _check(bool(run.dataset.name), "dataset.name", "a dataset name", run.dataset.name)
    names = [stage.name for stage in run.stages]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UserError(f"stage name '{duplicates[0]}' is used twice: give each stage its own `name:`")


def _plain(value: Any) -> Any:
    """Tuples → lists, recursively: YAML's safe dumper only knows lists."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
