"""Experiment configuration: dataclass -> YAML -> ``--set key=value`` -> saved per run.

``ExperimentConfig`` = ``model`` (the model's own ``FoalNetConfig``) + ``data`` (``DataConfig``)
+ ``train`` (``TrainConfig``). Each component validates itself in ``__post_init__`` and raises
``ValueError`` naming the bad values, so a typo fails before any data is read. Paths that the
user must give are ``MISSING`` (never a home-directory default); ``check_complete()`` refuses to
run with one left unset.

Presets: ``paper`` is spec §2 exactly; ``tiny`` is the offline CPU setting of the demo.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml
from foalnet.errors import UsageError

RUN_CONFIG_FILE = "config.yaml"  # a run folder's resolved config (train/run.py)
MISSING = "???"  # a required value the user has not given yet (as in s3prl / omegaconf)

MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
SCHEDULES = ("constant", "warmup_cosine")
SELECT_METRICS = ("ua", "wa", "macro_f1", "loss")


def _bad(component: str, problems: list[str]) -> None:
    if problems:
        raise UsageError(f"invalid {component}: " + "; ".join(problems))


@dataclass
class DataConfig:
    """Where the items come from and how a fold is split."""

    data_dir: str = MISSING  # prepared DATA_DIR (manifest.jsonl, prepare.json, visual/<encoder>/)
    fold: int | None = None  # test fold (IEMOCAP: session 1..5); None = not chosen yet
    visual_encoder: str | None = None  # cache sub-folder of DATA_DIR/visual/; None = the only one
    # speakers of the training folds held out for model selection; "auto": as many as give the
    # dev split >= 48 items and >= 10 % of the training pool, at most a third of its speakers
    # (IEMOCAP: 1; 10 actors x 8 clips: 3). One speaker of 8 clips makes selection a coin flip.
    # 0: no dev split: every training speaker trains and the weights after the last epoch are kept
    dev_speakers: int | str = "auto"
    select_on_test: bool = False  # paper protocol: pick the best epoch on the TEST fold (optimistic)
    num_workers: int = 0  # DataLoader worker processes
    length_grouped: bool = False  # batch similar lengths together (still class-balanced)
    group_batches: int = 50  # length-grouping window, in batches
    cache_audio: bool = True  # run the audio encoder's fixed front end once per utterance (same function)
    # speed perturbation of the TRAINING clips (Ko et al. 2015): each factor f adds a copy of
    # every training clip resampled by f (tempo and pitch x f), cached like the originals and
    # z-scored as a speaker of its own (speaker_norm); an epoch still draws len(originals) items
    speed_perturb: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        problems = []
        if self.fold is not None and (not isinstance(self.fold, int) or self.fold < 0):
            problems.append(f"fold={self.fold!r} must be a non-negative integer or null")
        if self.dev_speakers != "auto" and not (isinstance(self.dev_speakers, int)
                                                and self.dev_speakers >= 0):
            problems.append(f"dev_speakers={self.dev_speakers!r} must be >= 0 or 'auto'")
        if self.num_workers < 0:
            problems.append(f"num_workers={self.num_workers} must be >= 0")
        if self.group_batches < 1:
            problems.append(f"group_batches={self.group_batches} must be >= 1")
        factors = list(self.speed_perturb)
        if any(not 0.5 <= float(f) <= 2.0 or float(f) == 1.0 for f in factors) or len(set(factors)) < len(factors):
            problems.append(f"speed_perturb={factors} must be distinct factors in [0.5, 2] other than 1")
        _bad("data config", problems)


@dataclass
class TrainConfig:
    """Optimisation recipe (spec §2 in the paper preset)."""

    lr: float = 1e-4  # AdamW learning rate
    weight_decay: float = 0.01  # AdamW decoupled weight decay (torch default)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    eps: float = 1e-8  # AdamW epsilon
    batch_size: int = 16  # utterances per device per step
    epochs: int = 40  # passes over len(train) class-balanced draws
    # at least this many optimiser steps: epochs are added when `epochs` gives fewer (small
    # corpora; train/run.py: train_epochs); `--set train.epochs=N` alone sets it to 0 (override)
    min_steps: int = 0
    seed: int = 1234  # one seed for model init, sampler, dev split and negatives
    mixed_precision: str = "auto"  # auto = fp16 on GPU, none on CPU; or no|fp16|bf16
    grad_accum: int = 1  # gradient accumulation steps
    max_grad_norm: float = 0.0  # gradient clipping norm; 0 = off (the original does not clip)
    schedule: str = "constant"  # constant | warmup_cosine (built but unused in the original)
    warmup_ratio: float = 0.1  # warmup share of all steps for warmup_cosine
    balanced_sampling: bool = True  # draws with replacement, weight 1/count(class)
    select_metric: str = "ua"  # dev metric that picks the best epoch (loss: lowest)
    # epochs averaged (trailing mean) in the selection score: a single epoch's score on a small
    # dev split is mostly noise; the weights kept are those of the window's last epoch
    select_window: int = 3
    # weights evaluated, selected and kept: an exponential moving average of the trained ones,
    # updated after every optimiser step with this decay (torch.optim.swa_utils); 0 = off.
    # A small dev split scores the averaged weights more steadily than one step's weights
    ema_decay: float = 0.0
    # models trained per fold with seeds seed, seed + 1000, ... (train/ensemble.py); the fold is
    # scored by the mean of their class probabilities, and best/ holds all of them (model/ensemble.py)
    ensemble: int = 1
    eval_batch_size: int = 0  # batch size for dev/test; 0 = batch_size
    checkpoint_every: int = 0  # also checkpoint every N optimiser steps; 0 = end of epoch only
    # checkpoints left when the run completes (the latest N; 0 = none); while training the latest max(N, 1)
    keep_checkpoints: int = 0
    save_last: bool = False  # also write last/ (the weights after the final epoch); best/ is always written
    nan_patience: int = 5  # consecutive non-finite losses tolerated before the run stops
    cpu: bool = False  # force CPU even when a GPU is present
    max_steps: int = 0  # stop after N steps in total (debug/tests); 0 = no limit

    def __post_init__(self) -> None:
        problems = []
        if not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"lr={self.lr} must be > 0")
        if self.weight_decay < 0:
            problems.append(f"weight_decay={self.weight_decay} must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            problems.append(f"betas={self.betas} must be two values in [0, 1)")
        for name in ("batch_size", "epochs", "grad_accum", "nan_patience", "select_window", "ensemble"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("eval_batch_size", "checkpoint_every", "keep_checkpoints", "max_steps", "min_steps"):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)} must be >= 0")
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append(f"ema_decay={self.ema_decay} must be in [0, 1)")
        if self.max_grad_norm < 0:
            problems.append(f"max_grad_norm={self.max_grad_norm} must be >= 0")
        if self.mixed_precision not in MIXED_PRECISION:
            problems.append(f"mixed_precision={self.mixed_precision!r} not in {MIXED_PRECISION}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule={self.schedule!r} not in {SCHEDULES}")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        if self.select_metric not in SELECT_METRICS:
            problems.append(f"select_metric={self.select_metric!r} not in {SELECT_METRICS}")
        _bad("train config", problems)


def _model_config_cls() -> type:
    from foalnet.model.foalnet import FoalNetConfig  # imported lazily: model/ pulls in torch

    return FoalNetConfig


@dataclass
class ExperimentConfig:
    """One experiment: the model, its data and its optimisation recipe."""

    model: Any  # FoalNetConfig (model/foalnet.py), saved as the model's config.json too
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def check_complete(self) -> None:
        """Raise if a required value is still MISSING (called before a run starts)."""
        missing = [f"{k}" for k, v in _flatten(self.to_dict()).items() if v == MISSING]
        if missing:
            raise UsageError(f"required config values not set: {', '.join(missing)}")

    def to_dict(self) -> dict:
        return {
            "model": _to_plain(self.model),
            "data": dataclasses.asdict(self.data),
            "train": dataclasses.asdict(self.train),
        }

    @classmethod
    def from_dict(cls, raw: dict) -> "ExperimentConfig":
        unknown = set(raw) - {"model", "data", "train"}
        if unknown:
            raise UsageError(f"unknown config sections: {sorted(unknown)}")
        return cls(
            model=_build(_model_config_cls(), raw.get("model") or {}, "model"),
            data=_build(DataConfig, raw.get("data") or {}, "data"),
            train=_build(TrainConfig, raw.get("train") or {}, "train"),
        )

    def save_yaml(self, path: str | Path, extra: dict | None = None) -> None:
        """Write the resolved config (plus e.g. git hash / versions under ``_run``)."""
        payload = self.to_dict()
        if extra:
            payload["_run"] = extra
        text = yaml.safe_dump(payload, sort_keys=False, default_flow_style=None)
        from foalnet.data.files import write_text_atomic

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)

    @classmethod
    def load_yaml(cls, path: str | Path) -> "ExperimentConfig":
        raw = yaml.safe_load(Path(path).read_text()) or {}
        raw.pop("_run", None)
        return cls.from_dict(raw)

    def override(self, assignments: list[str]) -> "ExperimentConfig":
        """Return a copy with ``a.b=c`` assignments applied, ``c`` coerced to the field type.

        ``train.epochs=N`` without ``train.min_steps=...`` also sets min_steps to 0: an epoch
        count asked for is the one trained (the preset's minimum applies to its own epochs)."""
        raw = self.to_dict()
        keys = {_split_assignment(item)[0] for item in assignments}
        if "train.epochs" in keys and "train.min_steps" not in keys:
            raw["train"]["min_steps"] = 0
        for item in assignments:
            key, value = _split_assignment(item)
            section, _, name = key.partition(".")
            if section not in raw or not name or "." in name:
                raise UsageError(f"--set {item!r}: key must be model.X, data.X or train.X")
            cls = {"model": _model_config_cls(), "data": DataConfig, "train": TrainConfig}[section]
            hints = _field_types(cls)
            if name not in hints:
                raise UsageError(f"--set {item!r}: {section} has no field {name!r}")
            raw[section][name] = coerce(value, hints[name], key)
        return ExperimentConfig.from_dict(raw)


def preset(name: str) -> ExperimentConfig:
    """The named experiment preset: ``paper`` (spec §2) or ``tiny`` (offline CPU demo)."""
    model_cls = _model_config_cls()
    if name == "paper":
        return ExperimentConfig(model=model_cls.paper(), data=DataConfig(), train=TrainConfig())
    if name == "tiny":
        # Measured on the synthetic corpus (foalnet synth, size small): lr 3e-3 / 30 epochs gave
        # 5-fold test UA full 0.829, audio-only 0.479, video-only 0.635 (`foalnet ablate --preset
        # tiny --rows full,audio_only,video_only`); lr 1e-3 / 30 epochs on folds 1, 3: 0.675, 0.850.
        # With the offline encoder's attention block (FoalNetConfig.tiny): full 0.910, audio-only
        # 0.477, video-only 0.635 (`foalnet demo`). lr 1e-3 and min_steps 300 were chosen on real
        # speech (docs/benchmarks.md, "The offline audio path on real speech": with the eGeMAPS
        # LLD front end and speaker_norm lr 3e-3 gave 0.630 against 0.682 on the selection folds);
        # `foalnet demo` with them: full 0.935, audio-only 0.525, video-only 0.693 (5 min 51 s on the quiet 2-core machine).
        train = TrainConfig(
            lr=1e-3,
            batch_size=16,
            epochs=30,
            # 56 training clips make 4 steps an epoch: 30 epochs are 120 steps, too few (real
            # speech, 96 clips: 0.646 with 300 steps against 0.521 with 120 on the selection
            # folds); the demo's 126 training clips get 38 epochs instead of 30
            min_steps=300,
            # five models per fold, probabilities averaged (train/ensemble.py): on the real-speech
            # selection folds 0.714 against 0.646 for the mean single model (336 clips) and 0.646
            # against 0.583 (96 clips); one model moves by up to 8 points of UA with the seed
            ensemble=5,
            mixed_precision="no",
            cpu=True,
        )
        return ExperimentConfig(model=model_cls.tiny(), data=DataConfig(), train=train)
    raise UsageError(f"unknown preset {name!r}; choose from {PRESETS}")


PRESETS = ("paper", "tiny")


# ---------------------------------------------------------------------------- helpers


def _to_plain(obj: Any) -> dict:
    if dataclasses.is_dataclass(obj):
        return json.loads(json.dumps(dataclasses.asdict(obj)))
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"cannot serialise config of type {type(obj).__name__}")


def _flatten(raw: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key not in ("audio_options", "visual_settings"):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


# Fields removed since; ignored when an older run's config.yaml is read (e.g. to resume it).
REMOVED_FIELDS = {"train": ("keep_freed_memory",)}


def _build(cls: type, raw: dict, section: str) -> Any:
    raw = {k: v for k, v in raw.items() if k not in REMOVED_FIELDS.get(section, ())}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise UsageError(f"unknown {section} config keys: {unknown}")
    return cls(**raw)


def _split_assignment(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise UsageError(f"--set {item!r}: expected key=value")
    key, value = item.split("=", 1)
    return key.strip(), value.strip()


def coerce(text: str, hint: Any, key: str = "value") -> Any:
    """Turn a command-line string into the declared field type (bool, int, float, list, ...)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if type(None) in args and text.lower() in ("null", "none", "~", ""):
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(text, arg, key)
            except ValueError as err:
                errors.append(str(err))
        raise UsageError(f"{key}={text!r}: " + " / ".join(errors))
    if hint is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"{key}={text!r} is not a boolean (true/false)")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise UsageError(f"{key}={text!r} is not an integer") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise UsageError(f"{key}={text!r} is not a number") from None
    if hint is str:
        return text
    if origin in (list, tuple, dict) or hint in (list, dict, Any):
        value = yaml.safe_load(text)
        expected = origin or hint
        if expected is tuple:
            expected = (list, tuple)
        if expected is not Any and not isinstance(value, expected):
            raise UsageError(f"{key}={text!r} is not a {getattr(expected, '__name__', expected)}")
        if origin is list and args and args[0] in (int, float):
            value = [coerce(str(v), args[0], key) for v in value]
        return value
    return yaml.safe_load(text)
