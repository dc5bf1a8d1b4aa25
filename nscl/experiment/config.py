"""Run parameters: one flat, validated dictionary.

Every run (CLI, notebook, sweep) is described by a flat dict of the keys in :data:`PARAMS`.
Parameter files (YAML) are layered left to right, then ``key=value`` overrides. Unknown keys and
wrong types fail *before* any training, naming the key and the valid keys (papermill itself only
warns on a misspelled parameter).

The schema is collected here, complete on first import, from where each parameter is read:
:data:`COMMON` (model, training loop, null-space tracking, run), ``nscl.data.PARAMS`` (the task
stream) and each method's ``params`` (:mod:`nscl.methods`).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from typing import Any, Iterable

import yaml

from ..core.nullspace import NullSpaceRule
from ..core.params import Param
from ..data import BENCHMARKS, benchmark_classes, max_tasks
from ..data import PARAMS as DATA_PARAMS
from ..methods import METHODS
from ..util import ReadableError, open_regular


class ConfigError(ReadableError, ValueError):
    """A parameter is unknown, has the wrong type, or an invalid value (shown as one ``error:`` line
    in a notebook)."""


#: parameters every run reads: model, training loop, null-space tracking (recorded for every
#: method, used by the projecting ones), run
COMMON: tuple[Param, ...] = (
    # --- model
    Param("model", "mlp", "str", "backbone", choices=("mlp", "cnn", "resnet18")),
    Param("hidden", [256, 256], "list[int]", "MLP hidden widths", range="[1, inf)"),
    Param("bias", False, "bool", "bias in backbone Linear/Conv layers (off: exact null spaces)"),
    Param("cnn_channels", [32, 64], "list[int]", "small CNN channel widths", range="[1, inf)"),
    Param("batchnorm", True, "bool", "BatchNorm in the small CNN (ResNet-18 always has it)"),
    Param(
        "resnet_block",
        "preact",
        "str",
        "ResNet-18 block: identity shortcuts add the raw input (preact, "
        "He et al.) or bn1(input) (official Adam-NSCL code)",
        choices=("preact", "official"),
    ),
    Param("width", 64, "int", "ResNet-18 base width (64 = the paper's 64/128/256/512)", range="[1, inf)"),
    # --- training loop
    Param("method", "adam_nscl", "str", "continual-learning method, see nscl.methods.METHODS"),
    Param("epochs", 3, "int", "epochs per task", range="[1, inf)"),
    Param("batch_size", 64, "int", "training batch size", range="[1, inf)"),
    Param("eval_batch_size", 1000, "int", "evaluation batch size", range="[1, inf)"),
    Param(
        "lr",
        1e-3,
        "float",
        "backbone learning rate (first task; later tasks too unless lr_projected)",
        range="(0, inf)",
    ),
    Param("head_lr", None, "float", "head learning rate (default: lr)", range="(0, inf)"),
    Param("bn_lr", None, "float", "BatchNorm learning rate (default: lr)", range="(0, inf)"),
    Param(
        "weight_decay",
        0.0,
        "float",
        "coupled L2 weight decay on backbone and BN (as the official code)",
        range="[0, inf)",
    ),
    Param("milestones", [], "list[int]", "MultiStepLR epochs (paper: [30, 60, 80])", range="[1, inf)"),
    Param("gamma", 0.5, "float", "MultiStepLR decay factor", range="(0, inf)"),
    Param("betas", [0.9, 0.999], "list[float]", "Adam betas", range="[0, 1)"),
    Param(
        "eps_placement",
        "torch",
        "str",
        "NullSpaceAdam eps: m_hat / (sqrt(v_hat) + eps) (torch) or the "
        "official code's m_hat / (sqrt(v_hat) + eps / sqrt(1 - beta2^t))",
        choices=("torch", "official"),
    ),
    Param("eps", 1e-8, "float", "Adam eps", range="[0, inf)"),
    # --- null space (tracked for every method; the projecting methods train in it)
    Param(
        "covariance",
        "per_sample",
        "str",
        "per-sample uncentred covariance (principled, default) or the official batch-mean-then-unfold variant",
        choices=("per_sample", "batch_mean"),
    ),
    Param(
        "nullspace_rule",
        "energy",
        "str",
        "which eigenvectors span the null space: energy (default, "
        "chosen by measurement; GPM-style, rising with energy_step), a_min (paper), leak (held-out leakage "
        "budget), rel_tol",
        choices=("energy", "a_min", "leak", "rel_tol"),
    ),
    Param("a", 10.0, "float", "a_min rule: keep eigenvalues <= a * lambda_min", range="(0, inf)"),
    Param(
        "a_min_floor",
        "rank",
        "str",
        "a_min rule on rank-deficient covariances: floor lambda_min at the "
        "numerical-rank tolerance (principled, default) or use it raw (official)",
        choices=("rank", "none"),
    ),
    Param("energy", 0.9, "float", "energy rule: directions holding this energy fraction are protected", range="(0, 1]"),
    Param(
        "energy_step",
        0.0,
        "float",
        "energy rule: the threshold rises by this much per finished task "
        "(GPM on CIFAR-100: 0.003), energy_t = min(energy + t * energy_step, energy_max)",
        range="[0, inf)",
    ),
    Param("energy_max", 1.0, "float", "energy rule: cap of the rising threshold (in [energy, 1])", range="(0, 1]"),
    Param(
        "leak",
        0.02,
        "float",
        "leak rule: largest null space holding at most this share of the old tasks' "
        "held-out (validation) input energy, tr(U2' C_val U2) / tr(C_val); needs val_fraction > 0",
        range="[0, 1)",
    ),
    Param("rel_tol", 1e-3, "float", "rel_tol rule: eigenvalues <= rel_tol * lambda_max are null", range="(0, inf)"),
    Param(
        "cov_batch_size",
        None,
        "int",
        "batch size of the covariance pass (default: batch_size for batch_mean, eval_batch_size for per_sample)",
        range="[1, inf)",
    ),
    Param(
        "cov_samples",
        None,
        "int",
        "covariance pass on a seeded random subset of at most this many "
        "samples per task, reweighted to the task's size (unbiased; default: every sample)",
        range="[1, inf)",
    ),
    Param(
        "cov_patches",
        None,
        "int",
        "per_sample covariance of a conv: at most this many random patch "
        "positions per sample (unbiased; default: every position)",
        range="[1, inf)",
    ),
    Param(
        "eigen_update",
        "full",
        "str",
        "null spaces after task 2 on: full eigendecomposition (exact) or "
        "nested (Rayleigh-Ritz inside the previous null space: cheaper, never larger)",
        choices=("full", "nested"),
    ),
    # --- run
    Param("seed", 0, "int", "seed for data order, init and everything else", range="[0, inf)"),
    Param("device", "auto", "str", "auto (cuda if available), cpu, cuda, cuda:N"),
    Param("threads", None, "int", "torch CPU threads (default: torch's)", range="[1, inf)"),
    Param("quiet", False, "bool", "no progress bars"),
    Param("preset", None, "str", "named bundle of parameters (config.PRESETS), expanded where it is named"),
    Param("checkpoint", True, "bool", "write a per-task checkpoint so a killed run resumes"),
    Param(
        "nan_check_every",
        10,
        "int",
        "look at the loss for NaN/inf every this many steps (and at each "
        "epoch end); the error still names the first bad step. 1 = every step (a host sync per step)",
        range="[1, inf)",
    ),
)


def _collect() -> dict[str, Param]:
    """The schema: every declared parameter once (a method may re-declare a shared one identically)."""
    out: dict[str, Param] = {}
    declared = [*DATA_PARAMS, *COMMON, *(p for cls in METHODS.values() for p in cls.params)]
    for p in declared:
        if p.name in out and out[p.name] != p:
            raise RuntimeError(f"parameter {p.name!r} declared twice with different definitions")
        out[p.name] = p
    return out


PARAMS: dict[str, Param] = _collect()


PRESETS: dict[str, dict] = {
    # Adam-NSCL's official switches (docs/official_vs_paper.md), on any benchmark/model:
    # batch-mean covariance, raw a*lambda_min rule, 1/sqrt(r) step scaling, EWC on BatchNorm.
    "adam_nscl_official": dict(
        method="adam_nscl",
        covariance="batch_mean",
        a_min_floor="none",
        scale_sqrt_r=True,
        bn="ewc",
        ewc_lambda=100.0,
        nullspace_rule="a_min",
        project="update",
        eps_placement="official",
    ),
    # The paper's 10-split CIFAR-100 recipe as the official script runs it (docs/official_vs_paper.md).
    "cifar100_10_paper": dict(
        benchmark="split_cifar100_10",
        model="resnet18",
        method="adam_nscl",
        epochs=80,
        batch_size=32,
        lr=1e-4,
        lr_projected=5e-5,
        head_lr=1e-3,
        bn_lr=5e-4,
        weight_decay=5e-5,
        milestones=[30, 60, 80],
        gamma=0.5,
        a=10.0,
        covariance="batch_mean",
        a_min_floor="none",
        scale_sqrt_r=True,
        bn="ewc",
        ewc_lambda=100.0,
        nullspace_rule="a_min",
        project="update",
        eps_placement="official",
        resnet_block="official",
    ),
    "cifar100_20_paper": dict(
        benchmark="split_cifar100_20",
        model="resnet18",
        method="adam_nscl",
        epochs=80,
        batch_size=16,
        lr=1e-4,
        lr_projected=5e-5,
        head_lr=1e-3,
        bn_lr=5e-4,
        weight_decay=5e-5,
        milestones=[30, 60, 80],
        gamma=0.5,
        a=30.0,
        covariance="batch_mean",
        a_min_floor="none",
        scale_sqrt_r=True,
        bn="ewc",
        ewc_lambda=100.0,
        nullspace_rule="a_min",
        project="update",
        eps_placement="official",
        resnet_block="official",
    ),
    "tinyimagenet_25_paper": dict(
        benchmark="tinyimagenet_25",
        model="resnet18",
        method="adam_nscl",
        epochs=80,
        batch_size=16,
        lr=5e-5,
        lr_projected=5e-5,
        head_lr=1e-3,
        bn_lr=5e-4,
        weight_decay=5e-5,
        milestones=[30, 60, 80],
        gamma=0.5,
        a=10.0,
        covariance="batch_mean",
        a_min_floor="none",
        scale_sqrt_r=True,
        bn="ewc",
        ewc_lambda=100.0,
        nullspace_rule="a_min",
        project="update",
        eps_placement="official",
        resnet_block="official",
    ),
}


def defaults() -> dict:
    """All parameters at their defaults (fresh copies)."""
    return {k: (list(p.default) if isinstance(p.default, list) else p.default) for k, p in PARAMS.items()}


def nullspace_rule(cfg: dict) -> NullSpaceRule:
    """The null-space selection rule of a configuration (``kind``: ``nullspace_rule``, ``floor``:
    ``a_min_floor``, the other parameters as named)."""
    return NullSpaceRule(
        kind=cfg["nullspace_rule"],
        a=cfg["a"],
        floor=cfg["a_min_floor"],
        energy=cfg["energy"],
        energy_step=cfg["energy_step"],
        energy_max=cfg["energy_max"],
        rel_tol=cfg["rel_tol"],
        leak=cfg["leak"],
    )


def _unknown(key: str) -> ConfigError:
    close = difflib.get_close_matches(str(key), PARAMS, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown parameter {key!r}.{hint} Valid keys: {', '.join(sorted(PARAMS))}")


# YAML 1.1 (PyYAML) reads ``1e-3`` (no dot) as a string; float parameters accept that spelling.
_SCI_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _as_float(v: Any) -> Any:
    return float(v) if isinstance(v, str) and _SCI_FLOAT.fullmatch(v.strip()) else v


def _short(value: Any) -> str:
    """A repr of at most about 100 characters, however large ``value`` is."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxdict, r.maxlevel = 60, 60, 8, 8, 3
    return r.repr(value)


def _check_type(key: str, value: Any) -> Any:
    p = PARAMS[key]
    if value is None:
        if p.optional:
            return None
        raise ConfigError(f"parameter {key!r} may not be null ({p.help})")
    t = p.type

    def bad() -> ConfigError:  # built only when raised: the message shows a bounded repr of the value
        return ConfigError(
            f"parameter {key!r} must be {t}{' or null' if p.optional else ''}, "
            f"got {_short(value)} ({type(value).__name__}): {p.help}"
        )

    if t == "bool":
        if not isinstance(value, bool):
            raise bad()
    elif t == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
    elif t == "float":
        value = _as_float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"parameter {key!r} must be a finite number, got {_short(value)}: {p.help}")
    elif t == "str":
        if not isinstance(value, str):
            raise bad()
    elif t.startswith("list["):
        inner = t[5:-1]
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise bad()
        out = []
        for v in value:
            if inner == "int" and (isinstance(v, bool) or not isinstance(v, int)):
                raise bad()
            if inner == "float":
                v = _as_float(v)
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise bad()
                v = float(v)
                if not math.isfinite(v):
                    raise ConfigError(f"parameter {key!r} must hold finite numbers, got {_short(value)}: {p.help}")
            if inner == "str" and not isinstance(v, str):
                raise bad()
            out.append(v)
        value = out
    elif t == "dict":
        if not isinstance(value, dict):
            raise bad()
    if p.choices and value not in p.choices:
        raise ConfigError(f"parameter {key!r} must be one of {', '.join(map(str, p.choices))}; got {_short(value)}")
    out_of_range = p.range_error(value)
    if out_of_range:
        raise ConfigError(f"parameter {key!r} {out_of_range}, got {_short(value)}: {p.help}")
    return value


def validate(cfg: dict) -> dict:
    """Check keys, types and cross-key rules; return a fully resolved copy (all keys present)."""
    out = defaults()
    for key, value in cfg.items():
        if key not in PARAMS:
            raise _unknown(key)
        out[key] = _check_type(key, value)
    _check_values(out)
    return out


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _check_values(cfg: dict) -> None:
    if cfg["benchmark"] not in BENCHMARKS:
        raise ConfigError(
            f"parameter 'benchmark': unknown {cfg['benchmark']!r}; valid: {', '.join(sorted(BENCHMARKS))}"
        )
    if cfg["method"] not in METHODS:
        raise ConfigError(f"parameter 'method': unknown {cfg['method']!r}; valid: {', '.join(sorted(METHODS))}")
    # single values are range-checked by their declarations (Param.range, in _check_type)
    most = max_tasks(cfg["benchmark"])
    if cfg["n_tasks"] is not None and most is not None and cfg["n_tasks"] > most:
        classes = benchmark_classes(cfg["benchmark"])
        why = (
            f"splits {classes} classes into tasks"
            if BENCHMARKS[cfg["benchmark"]]["scenario"] == "split"
            else f"labels its images by distinct halves of {classes} classes"
        )
        raise ConfigError(
            f"parameter 'n_tasks': {cfg['benchmark']} {why}, so at most {most} tasks; got {cfg['n_tasks']}"
        )
    if cfg["energy_max"] < cfg["energy"]:
        raise ConfigError(
            f"parameter 'energy_max' must be in [energy, 1] = [{cfg['energy']}, 1], got {cfg['energy_max']}"
        )
    if cfg["nullspace_rule"] == "leak" and cfg["val_fraction"] <= 0:
        raise ConfigError(
            "parameter 'nullspace_rule' is 'leak', which measures the null space on the old "
            "tasks' validation inputs: set val_fraction > 0 (e.g. 0.1) or choose another rule"
        )
    if not _DEVICE.fullmatch(cfg["device"]):
        raise ConfigError(f"parameter 'device' must be auto, cpu, cuda, cuda:N or mps; got {cfg['device']!r}")
    if cfg["preset"] is not None and cfg["preset"] not in PRESETS:
        raise ConfigError(f"parameter 'preset': unknown {cfg['preset']!r}; valid: {', '.join(PRESETS)}")
    try:
        METHODS[cfg["method"]].check_params(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def read_by(method: str) -> set[str]:
    """The parameters a method reads: :data:`COMMON`, the data parameters and its own ``params``."""
    return {p.name for p in (*COMMON, *DATA_PARAMS, *METHODS[method].params)}


def unread(cfg: dict) -> list[str]:
    """Parameters set away from their defaults that ``cfg['method']`` does not read (declared only by
    other methods): they change nothing in this run but make it look different from one without them."""
    read, d = read_by(cfg["method"]), defaults()
    return sorted(k for k, v in cfg.items() if k in PARAMS and k not in read and v != d[k])


#: parameter and sweep files are small: a larger file, or one whose values expand (YAML aliases) to
#: more than this many list / mapping items, is refused before anything looks at its values
MAX_FILE_BYTES = 1 << 20
MAX_ITEMS = 100_000


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is an error (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def _items(value: Any, memo: dict) -> int:
    """Items of ``value`` once YAML aliases are expanded, counted without expanding them (an alias
    is one shared object: each is counted once, times the number of places it appears)."""
    if not isinstance(value, (list, dict)):
        return 1
    key = id(value)
    if key in memo:
        if memo[key] is None:
            raise ConfigError("refers to itself (a YAML alias inside its own anchor)")
        return memo[key]
    memo[key] = None
    n = 1 + sum(_items(v, memo) for v in (value.values() if isinstance(value, dict) else value))
    memo[key] = n
    return n


def parse_yaml(text: str, where: str) -> Any:
    """YAML text -> data: duplicate keys refused, values bounded (:data:`MAX_ITEMS` after aliases),
    errors as one line naming ``where``."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{where} is not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise ConfigError(f"{where} nests too deeply") from None
    try:
        total = _items(data, {})
    except (ConfigError, RecursionError) as e:
        raise ConfigError(f"{where}: a value {e if isinstance(e, ConfigError) else 'nests too deeply'}") from None
    if total > MAX_ITEMS:
        sizes = {k: _items(v, {}) for k, v in data.items()} if isinstance(data, dict) else {}
        key = f"key {max(sizes, key=sizes.get)!r} " if sizes else ""
        raise ConfigError(
            f"{where}: {key}holds {total:.3g} items once its YAML aliases are expanded; at most {MAX_ITEMS} "
            f"(an alias bomb?)"
        )
    return data


def read_yaml(path: str | os.PathLike, what: str = "parameter file") -> Any:
    """Read and parse a YAML file (:func:`parse_yaml`), every problem a one-line :class:`ConfigError`."""
    where = f"{what} {str(path)!r}"
    try:
        with open_regular(path, limit=None) as f:  # never blocks on a FIFO
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{where} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{where} is a directory; give a YAML file") from None
    except OSError as e:
        raise ConfigError(f"cannot read {where}: {e.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{where} is larger than {MAX_FILE_BYTES >> 20} MiB; parameter files are small YAML")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    return parse_yaml(text, where)


def parse_value(text: str) -> Any:
    """Parse the value of a ``-p key=value`` override as YAML (numbers, bools, lists, null); text
    that is not YAML stays text."""
    if not text.strip():
        return ""
    try:
        return parse_yaml(text, f"value {text[:40]!r}")
    except ConfigError as e:
        if "not valid YAML" in str(e):
            return text
        raise


def read_mapping(path: str | os.PathLike) -> dict:
    """A YAML file holding one flat mapping (keys not checked: notebook extras are allowed there)."""
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"parameter file {str(path)!r} must hold a mapping of key: value")
    return data


def load_file(path: str | os.PathLike) -> dict:
    """Read one YAML parameter file (a flat mapping of known keys)."""
    data = read_mapping(path)
    for key in data:
        if key not in PARAMS:
            err = _unknown(key)
            raise ConfigError(f"{path}: {err}") from None
    return data


def layer(sources: Iterable[dict]) -> dict:
    """Layer parameter mappings left to right, each ``preset`` expanded where it is named: under the
    keys of the same mapping but over everything layered before it. Not validated (a notebook's
    extras may be there); :func:`resolve`, sweeps and the notebook suite all layer through here, so
    the same files give the same run everywhere."""
    layered: dict = {}
    for source in sources:
        preset = source.get("preset")
        if preset is not None:
            if preset not in PRESETS:
                raise ConfigError(f"parameter 'preset': unknown {preset!r}; valid: {', '.join(PRESETS)}")
            layered.update(PRESETS[preset])
        layered.update(source)
    return layered


def resolve(files: Iterable[str | os.PathLike] = (), overrides: dict | None = None, **kwargs: Any) -> dict:
    """Layer parameter files (left to right), then ``overrides``, then keyword arguments (:func:`layer`).

    A ``preset`` is a named bundle of parameters expanded where it is named: under the keys of the
    same source (file / overrides / kwargs) but over everything layered before it. So
    ``-f params/base.yaml -p preset=adam_nscl_official`` switches base's run to the official
    variant, and a file with ``preset: cifar100_10_paper`` plus ``epochs: 10`` shortens the recipe.
    """
    return validate(layer([load_file(f) for f in files] + [dict(overrides or {}), dict(kwargs)]))


def parse_overrides(items: Iterable[str], check_keys: bool = True) -> dict:
    """``["method=adam_nscl", "seed=1"]`` -> ``{"method": "adam_nscl", "seed": 1}`` (YAML values);
    ``check_keys=False`` lets notebook extras through (the notebook checks them)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if check_keys and key not in PARAMS:
            raise _unknown(key)
        out[key] = parse_value(value)
    return out
