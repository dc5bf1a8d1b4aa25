"""Run parameters: one flat, validated dictionary.

Every run (CLI, notebook, sweep) is described by a flat dict of the keys in :data:`PARAMS`.
Parameter files (YAML) are layered left to right, then ``key=value`` overrides. Unknown keys and
wrong types fail *before* any training, naming the key and the valid keys (papermill itself only
warns on a misspelled parameter).

Other modules (pruning, low-rank, sweeps) add their keys with :func:`register`, so the list of
valid keys is always complete.
"""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from typing import Any, Iterable

import yaml


class ConfigError(ValueError):
    """A parameter is unknown, has the wrong type, or an invalid value."""


@dataclass(frozen=True)
class Param:
    default: Any
    type: str  # "bool" "int" "float" "str" "list[int]" "list[float]" "list[str]" "dict"
    help: str
    choices: tuple | None = None
    optional: bool = False  # None allowed


PARAMS: dict[str, Param] = {}


def register(name: str, default: Any, type: str, help: str, choices: Iterable | None = None,
             optional: bool | None = None) -> None:
    """Add a parameter (modules call this at import time)."""
    if name in PARAMS:
        raise RuntimeError(f"parameter {name!r} registered twice")
    PARAMS[name] = Param(default, type, help, tuple(choices) if choices else None,
                         default is None if optional is None else optional)


# --- data -------------------------------------------------------------------------------------
register("benchmark", "split_fmnist", "str", "task stream, see nscl.data.BENCHMARKS")
register("data_root", None, "str", "directory with the dataset files (else NSCL_DATA_ROOT, system paths)")
register("download", False, "bool", "allow torchvision to download a missing dataset (needs internet)")
register("n_tasks", None, "int", "override the benchmark's number of tasks")
register("samples_per_task", None, "int", "keep this many training+val samples per task (tiny runs)")
register("test_samples_per_task", None, "int", "keep this many test samples per task")
register("val_fraction", 0.1, "float", "held-out fraction of each task's training data")
register("class_order", "fixed", "str", "split class order: label order (paper) or seeded shuffle",
         choices=("fixed", "random"))
# --- model ------------------------------------------------------------------------------------
register("model", "mlp", "str", "backbone", choices=("mlp", "cnn", "resnet18"))
register("hidden", [256, 256], "list[int]", "MLP hidden widths")
register("bias", False, "bool", "bias in backbone Linear/Conv layers (off: exact null spaces)")
register("cnn_channels", [32, 64], "list[int]", "small CNN channel widths")
register("batchnorm", True, "bool", "BatchNorm in the small CNN (ResNet-18 always has it)")
register("width", 64, "int", "ResNet-18 base width (64 = the paper's 64/128/256/512)")
register("resnet_block", "preact", "str", "ResNet-18 block: identity shortcuts add the raw input (preact, "
         "He et al.) or bn1(input) (official Adam-NSCL code)", choices=("preact", "official"))
# --- method -----------------------------------------------------------------------------------
register("method", "adam_nscl", "str", "continual-learning method, see nscl.methods.METHODS")
register("epochs", 3, "int", "epochs per task")
register("batch_size", 64, "int", "training batch size")
register("eval_batch_size", 1000, "int", "evaluation batch size")
register("lr", 1e-3, "float", "backbone learning rate (first task; later tasks too unless lr_projected)")
register("lr_projected", None, "float", "backbone lr from task 2 on (Adam-NSCL's svd_lr)")
register("head_lr", None, "float", "head learning rate (default: lr)")
register("bn_lr", None, "float", "BatchNorm learning rate (default: lr)")
register("weight_decay", 0.0, "float", "coupled L2 weight decay on backbone and BN (as the official code)")
register("milestones", [], "list[int]", "MultiStepLR epochs (paper: [30, 60, 80])")
register("gamma", 0.5, "float", "MultiStepLR decay factor")
register("betas", [0.9, 0.999], "list[float]", "Adam betas")
register("eps", 1e-8, "float", "Adam eps")
register("eps_placement", "torch", "str", "NullSpaceAdam eps: m_hat / (sqrt(v_hat) + eps) (torch) or the "
         "official code's m_hat / (sqrt(v_hat) + eps / sqrt(1 - beta2^t))", choices=("torch", "official"))
register("ewc_lambda", 100.0, "float", "EWC penalty strength (method ewc; and bn=ewc)")
register("bn", "freeze", "str", "BatchNorm in later tasks: EWC on affine params (official), "
         "frozen after task 1 (principled default), or unprotected", choices=("ewc", "freeze", "none"))
# --- null space -------------------------------------------------------------------------------
register("covariance", "per_sample", "str", "per-sample uncentred covariance (principled, default) "
         "or the official batch-mean-then-unfold variant", choices=("per_sample", "batch_mean"))
register("nullspace_rule", "a_min", "str", "which eigenvectors span the null space",
         choices=("a_min", "energy", "rel_tol"))
register("a", 10.0, "float", "a_min rule: keep eigenvalues <= a * lambda_min")
register("a_min_floor", "rank", "str", "a_min rule on rank-deficient covariances: floor lambda_min at the "
         "numerical-rank tolerance (principled, default) or use it raw (official)", choices=("rank", "none"))
register("energy", 0.99, "float", "energy rule: directions holding this energy fraction are protected")
register("rel_tol", 1e-3, "float", "rel_tol rule: eigenvalues <= rel_tol * lambda_max are null")
register("project", "update", "str", "project the final Adam step (official) or the gradient before Adam",
         choices=("update", "grad"))
register("scale_sqrt_r", False, "bool", "official 1/sqrt(r) step scaling of the projector")
register("cov_batch_size", None, "int", "batch size of the covariance pass (default: batch_size for batch_mean, eval_batch_size for per_sample)")
register("cov_samples", None, "int", "covariance pass on a seeded random subset of at most this many "
         "samples per task, reweighted to the task's size (unbiased; default: every sample)")
register("cov_patches", None, "int", "per_sample covariance of a conv: at most this many random patch "
         "positions per sample (unbiased; default: every position)")
register("eigen_update", "full", "str", "null spaces after task 2 on: full eigendecomposition (exact) or "
         "nested (Rayleigh-Ritz inside the previous null space: cheaper, never larger)",
         choices=("full", "nested"))
# --- run --------------------------------------------------------------------------------------
register("seed", 0, "int", "seed for data order, init and everything else")
register("device", "auto", "str", "auto (cuda if available), cpu, cuda, cuda:N")
register("threads", None, "int", "torch CPU threads (default: torch's)")
register("quiet", False, "bool", "no progress bars")
register("preset", None, "str", "named bundle of parameters (config.PRESETS), expanded where it is named")
register("checkpoint", True, "bool", "write a per-task checkpoint so a killed run resumes")
register("nan_check_every", 10, "int", "look at the loss for NaN/inf every this many steps (and at each "
         "epoch end); the error still names the first bad step. 1 = every step (a host sync per step)")

PRESETS: dict[str, dict] = {
    # Adam-NSCL's official switches (research/adam_nscl.md 1.4-1.6), on any benchmark/model:
    # batch-mean covariance, raw a*lambda_min rule, 1/sqrt(r) step scaling, EWC on BatchNorm.
    "adam_nscl_official": dict(method="adam_nscl", covariance="batch_mean", a_min_floor="none",
                               scale_sqrt_r=True, bn="ewc", ewc_lambda=100.0, nullspace_rule="a_min",
                               project="update", eps_placement="official"),
    # The paper's 10-split CIFAR-100 recipe as the official script runs it (research/adam_nscl.md 1.7).
    "cifar100_10_paper": dict(
        benchmark="split_cifar100_10", model="resnet18", method="adam_nscl", epochs=80, batch_size=32,
        lr=1e-4, lr_projected=5e-5, head_lr=1e-3, bn_lr=5e-4, weight_decay=5e-5,
        milestones=[30, 60, 80], gamma=0.5, a=10.0, covariance="batch_mean", a_min_floor="none",
        scale_sqrt_r=True, bn="ewc", ewc_lambda=100.0, nullspace_rule="a_min", project="update",
        eps_placement="official", resnet_block="official"),
    "cifar100_20_paper": dict(
        benchmark="split_cifar100_20", model="resnet18", method="adam_nscl", epochs=80, batch_size=16,
        lr=1e-4, lr_projected=5e-5, head_lr=1e-3, bn_lr=5e-4, weight_decay=5e-5,
        milestones=[30, 60, 80], gamma=0.5, a=30.0, covariance="batch_mean", a_min_floor="none",
        scale_sqrt_r=True, bn="ewc", ewc_lambda=100.0, nullspace_rule="a_min", project="update",
        eps_placement="official", resnet_block="official"),
    "tinyimagenet_25_paper": dict(
        benchmark="tinyimagenet_25", model="resnet18", method="adam_nscl", epochs=80, batch_size=16,
        lr=5e-5, lr_projected=5e-5, head_lr=1e-3, bn_lr=5e-4, weight_decay=5e-5,
        milestones=[30, 60, 80], gamma=0.5, a=10.0, covariance="batch_mean", a_min_floor="none",
        scale_sqrt_r=True, bn="ewc", ewc_lambda=100.0, nullspace_rule="a_min", project="update",
        eps_placement="official", resnet_block="official"),
}


def _ensure_registered() -> None:
    """Import the method modules, which register their own parameters."""
    from . import methods  # noqa: F401


def defaults() -> dict:
    """All parameters at their defaults (fresh copies)."""
    _ensure_registered()
    return {k: (list(p.default) if isinstance(p.default, list) else p.default) for k, p in PARAMS.items()}


def _unknown(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, PARAMS, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown parameter {key!r}.{hint} Valid keys: {', '.join(sorted(PARAMS))}")


# YAML 1.1 (PyYAML) reads ``1e-3`` (no dot) as a string; float parameters accept that spelling.
_SCI_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _as_float(v: Any) -> Any:
    return float(v) if isinstance(v, str) and _SCI_FLOAT.fullmatch(v.strip()) else v


def _check_type(key: str, value: Any) -> Any:
    p = PARAMS[key]
    if value is None:
        if p.optional:
            return None
        raise ConfigError(f"parameter {key!r} may not be null ({p.help})")
    t = p.type
    bad = ConfigError(f"parameter {key!r} must be {t}{' or null' if p.optional else ''}, "
                      f"got {value!r} ({type(value).__name__}): {p.help}")
    if t == "bool":
        if not isinstance(value, bool):
            raise bad
    elif t == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
    elif t == "float":
        value = _as_float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        value = float(value)
    elif t == "str":
        if not isinstance(value, str):
            raise bad
    elif t.startswith("list["):
        inner = t[5:-1]
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise bad
        out = []
        for v in value:
            if inner == "int" and (isinstance(v, bool) or not isinstance(v, int)):
                raise bad
            if inner == "float":
                v = _as_float(v)
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise bad
                v = float(v)
            if inner == "str" and not isinstance(v, str):
                raise bad
            out.append(v)
        value = out
    elif t == "dict":
        if not isinstance(value, dict):
            raise bad
    if p.choices and value not in p.choices:
        raise ConfigError(f"parameter {key!r} must be one of {', '.join(map(str, p.choices))}; got {value!r}")
    return value


def validate(cfg: dict) -> dict:
    """Check keys, types and cross-key rules; return a fully resolved copy (all keys present)."""
    out = defaults()  # imports the methods, so every key is registered
    for key, value in cfg.items():
        if key not in PARAMS:
            raise _unknown(key)
        out[key] = _check_type(key, value)
    _check_values(out)
    return out


def _check_values(cfg: dict) -> None:
    from . import data, methods  # late import: both register names

    if cfg["benchmark"] not in data.BENCHMARKS:
        raise ConfigError(f"parameter 'benchmark': unknown {cfg['benchmark']!r}; valid: "
                          f"{', '.join(sorted(data.BENCHMARKS))}")
    if cfg["method"] not in methods.METHODS:
        raise ConfigError(f"parameter 'method': unknown {cfg['method']!r}; valid: "
                          f"{', '.join(sorted(methods.METHODS))}")
    for key in ("epochs", "batch_size", "eval_batch_size", "nan_check_every"):
        if cfg[key] < 1:
            raise ConfigError(f"parameter {key!r} must be >= 1, got {cfg[key]}")
    for key in ("cov_samples", "cov_patches"):
        if cfg[key] is not None and cfg[key] < 1:
            raise ConfigError(f"parameter {key!r} must be >= 1 or null (all), got {cfg[key]}")
    for key in ("lr", "a", "energy", "rel_tol"):
        if cfg[key] <= 0:
            raise ConfigError(f"parameter {key!r} must be > 0, got {cfg[key]}")
    if not 0 < cfg["energy"] <= 1:
        raise ConfigError(f"parameter 'energy' must be in (0, 1], got {cfg['energy']}")
    if not 0 <= cfg["val_fraction"] < 1:
        raise ConfigError(f"parameter 'val_fraction' must be in [0, 1), got {cfg['val_fraction']}")
    if cfg["preset"] is not None and cfg["preset"] not in PRESETS:
        raise ConfigError(f"parameter 'preset': unknown {cfg['preset']!r}; valid: {', '.join(PRESETS)}")


def parse_value(text: str) -> Any:
    """Parse the value of a ``-p key=value`` override as YAML (numbers, bools, lists, null)."""
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def load_file(path: str | os.PathLike) -> dict:
    """Read one YAML parameter file (a flat mapping)."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"parameter file {str(path)!r} not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"parameter file {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"parameter file {str(path)!r} must hold a mapping of key: value")
    _ensure_registered()
    for key in data:
        if key not in PARAMS:
            err = _unknown(key)
            raise ConfigError(f"{path}: {err}") from None
    return data


def resolve(files: Iterable[str | os.PathLike] = (), overrides: dict | None = None,
            **kwargs: Any) -> dict:
    """Layer parameter files (left to right), then ``overrides``, then keyword arguments.

    A ``preset`` is a named bundle of parameters expanded where it is named: under the keys of the
    same source (file / overrides / kwargs) but over everything layered before it. So
    ``-f params/base.yaml -p preset=adam_nscl_official`` switches base's run to the official
    variant, and a file with ``preset: cifar100_10_paper`` plus ``epochs: 10`` shortens the recipe.
    """
    layered: dict = {}
    sources = [load_file(f) for f in files] + [dict(overrides or {}), dict(kwargs)]
    for source in sources:
        preset = source.get("preset")
        if preset is not None:
            if preset not in PRESETS:
                raise ConfigError(f"parameter 'preset': unknown {preset!r}; valid: {', '.join(PRESETS)}")
            layered.update(PRESETS[preset])
        layered.update(source)
    return validate(layered)


def parse_overrides(items: Iterable[str]) -> dict:
    """``["method=adam_nscl", "seed=1"]`` -> ``{"method": "adam_nscl", "seed": 1}``."""
    _ensure_registered()
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if key not in PARAMS:
            raise _unknown(key)
        out[key] = parse_value(value)
    return out
