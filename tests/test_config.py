"""Parameters (nscl.experiment.config): bad ones are rejected before any training, naming the key; layering."""

from __future__ import annotations

import pytest

from nscl.apps import cli
from nscl.experiment import config
from nscl.methods import METHODS


def error_of(**overrides) -> str:
    with pytest.raises(config.ConfigError) as e:
        config.resolve(overrides=overrides)
    return str(e.value)


def test_unknown_key_names_it_suggests_and_lists_valid_keys():
    msg = error_of(lrr=0.1)
    assert "'lrr'" in msg and "Did you mean lr" in msg
    assert "Valid keys:" in msg and all(k in msg for k in ("epochs", "nullspace_rule", "seed", "benchmark"))
    msg = error_of(nulspace_rule="a_min")
    assert "Did you mean nullspace_rule" in msg


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("epochs", "three", "'epochs' must be int"),
        ("epochs", 2.5, "'epochs' must be int"),
        ("epochs", True, "'epochs' must be int"),
        ("lr", "fast", "'lr' must be float"),
        ("hidden", [64, "wide"], "'hidden' must be list[int]"),
        ("hidden", 64, "'hidden' must be list[int]"),
        ("bias", "yes", "'bias' must be bool"),
        ("method", None, "'method' may not be null"),
        ("covariance", "per_batch", "'covariance' must be one of per_sample, batch_mean"),
        ("nullspace_rule", "svd", "'nullspace_rule' must be one of"),
        ("bn", "keep", "'bn' must be one of ewc, freeze, none"),
        ("benchmark", "split_mnist", "parameter 'benchmark': unknown 'split_mnist'; valid:"),
        ("method", "sgd", "parameter 'method': unknown 'sgd'; valid:"),
        ("epochs", 0, "'epochs' must be >= 1"),
        ("energy", 1.5, "'energy' must be in (0, 1]"),
        ("lr", -1.0, "'lr' must be > 0"),
        ("energy_step", -0.01, "'energy_step' must be >= 0"),
        ("energy_step", float("nan"), "'energy_step' must be a finite number"),
        ("a", float("inf"), "'a' must be a finite number"),
        ("energy_max", 0.5, "'energy_max' must be in [energy, 1]"),
        ("energy_max", 1.01, "'energy_max' must be in (0, 1]"),
        ("leak", 1.0, "'leak' must be in [0, 1)"),
        ("leak", -0.1, "'leak' must be in [0, 1)"),
        ("leak", float("nan"), "'leak' must be a finite number"),
        ("preset", "cifar_paper", "parameter 'preset': unknown"),
        # non-finite numbers (issue 10, item 6): a NaN lr died at step 2, a NaN `a` gave empty null spaces
        ("lr", float("nan"), "'lr' must be a finite number, got nan"),
        ("lr", float("inf"), "'lr' must be a finite number, got inf"),
        ("lr", "1e400", "'lr' must be a finite number, got inf"),  # YAML's exponent spelling overflows
        ("a", float("nan"), "'a' must be a finite number, got nan"),
        ("energy", float("-inf"), "'energy' must be a finite number"),
        ("betas", [0.9, float("nan")], "'betas' must hold finite numbers"),
        # ranges declared with the parameters (issue 10, item 7): tracebacks deep in a run before
        ("n_tasks", 0, "'n_tasks' must be in [1, 200], got 0"),
        ("n_tasks", 11, "'n_tasks': split_fmnist splits 10 classes into tasks, so at most 10 tasks; got 11"),
        ("seed", -1, "'seed' must be >= 0, got -1"),
        ("samples_per_task", 0, "'samples_per_task' must be >= 1, got 0"),
        ("test_samples_per_task", -5, "'test_samples_per_task' must be >= 1"),
        ("hidden", [0], "'hidden' must hold values >= 1, got [0]"),
        ("cnn_channels", [8, 0], "'cnn_channels' must hold values >= 1"),
        ("betas", [0.9, 1.0], "'betas' must hold values in [0, 1), got [0.9, 1.0]"),
        ("val_fraction", 1.0, "'val_fraction' must be in [0, 1), got 1.0"),
        ("threads", 0, "'threads' must be >= 1"),
        ("rank_schedule", [0.0, 1.0], "'rank_schedule' must hold values in (0, 1]"),
        ("lr_projected", 0.0, "'lr_projected' must be > 0"),
    ],
)
def test_wrong_types_and_values_rejected(key, value, needle):
    assert needle in error_of(**{key: value})


def test_types_are_normalised():
    cfg = config.resolve(overrides=dict(lr=1, betas=(0, 0.9), hidden=(8, 4), lr_projected=None))
    assert cfg["lr"] == 1.0 and isinstance(cfg["lr"], float)
    assert cfg["betas"] == [0.0, 0.9] and isinstance(cfg["betas"][0], float) and cfg["hidden"] == [8, 4]
    assert set(cfg) == set(config.defaults())  # fully resolved: every key present


def test_overrides_parse_yaml_values_including_exponent_floats():
    over = config.parse_overrides(
        ["method=ewc", "seed=3", "hidden=[8, 8]", "lr=1e-3", "lr_projected=null", "quiet=true", "betas=[0.9, 5e-1]"]
    )
    cfg = config.resolve(overrides=over)
    assert cfg["method"] == "ewc" and cfg["seed"] == 3 and cfg["hidden"] == [8, 8] and cfg["quiet"] is True
    assert cfg["lr"] == 1e-3 and cfg["lr_projected"] is None and cfg["betas"] == [0.9, 0.5]
    with pytest.raises(config.ConfigError, match="must look like key=value"):
        config.parse_overrides(["seed"])
    with pytest.raises(config.ConfigError, match="unknown parameter 'sede'.*Did you mean seed"):
        config.parse_overrides(["sede=1"])


def test_files_layer_left_to_right_then_overrides_and_presets(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("epochs: 5\nlr: 1e-2\nhidden: [16]\n")
    b.write_text("epochs: 7\n")
    cfg = config.resolve([a, b], {"hidden": [4]}, seed=9)
    assert (cfg["epochs"], cfg["lr"], cfg["hidden"], cfg["seed"]) == (7, 0.01, [4], 9)
    p = config.resolve([a], {"preset": "cifar100_10_paper", "epochs": 10})
    assert p["model"] == "resnet18" and p["covariance"] == "batch_mean" and p["scale_sqrt_r"] is True
    assert p["epochs"] == 10  # keys given beside the preset beat it


def test_bad_files_rejected(tmp_path):
    with pytest.raises(config.ConfigError, match="parameter file '.*missing.yaml' not found"):
        config.resolve([tmp_path / "missing.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    with pytest.raises(config.ConfigError, match="is not valid YAML"):
        config.resolve([bad])
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- 1\n- 2\n")
    with pytest.raises(config.ConfigError, match="must hold a mapping"):
        config.resolve([notmap])
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("epochz: 3\n")
    with pytest.raises(config.ConfigError, match=r"unknown.yaml: unknown parameter 'epochz'. Did you mean epochs"):
        config.resolve([unknown])


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["-p", "lrr=0.1"], "unknown parameter 'lrr'. Did you mean lr"),
        (["-p", "epochs=many"], "'epochs' must be int"),
        (["-p", "covariance=foo"], "'covariance' must be one of"),
        (["-f", "no/such/file.yaml"], "parameter file 'no/such/file.yaml' not found"),
    ],
)
def test_cli_rejects_bad_params_before_training(argv, needle, tmp_path, capsys, monkeypatch):
    from nscl.experiment import trainer as train

    monkeypatch.setattr(train, "run", lambda *a, **k: pytest.fail("training started"))
    out = tmp_path / "run"
    assert cli.main(["run", *argv, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err
    assert not out.exists()


def test_leak_rule_needs_held_out_data():
    msg = error_of(nullspace_rule="leak", val_fraction=0.0)
    assert "validation inputs" in msg and "val_fraction > 0" in msg
    assert config.resolve(overrides=dict(nullspace_rule="leak", leak=0.05))["leak"] == 0.05


def test_ranges_checked_per_benchmark_and_null_allowed():
    assert config.resolve(overrides=dict(benchmark="split_cifar100_20", n_tasks=100))["n_tasks"] == 100
    assert "at most 100 tasks; got 101" in error_of(benchmark="split_cifar100_10", n_tasks=101)
    assert config.resolve(overrides=dict(benchmark="permuted_fmnist", n_tasks=11))["n_tasks"] == 11  # any count
    assert config.resolve(overrides=dict(benchmark="partition_fmnist", n_tasks=126))["n_tasks"] == 126
    assert "distinct halves of 10 classes, so at most 126 tasks; got 127" in error_of(
        benchmark="partition_fmnist", n_tasks=127
    )
    cfg = config.resolve(overrides=dict(n_tasks=None, threads=None, lr_projected=None, hidden=[]))
    assert cfg["n_tasks"] is None and cfg["threads"] is None and cfg["hidden"] == []


def test_benchmark_classes_match_the_data():
    """The class counts that config checks n_tasks against, without reading data, are the real ones."""
    from nscl import data

    assert set(data.DATASET_CLASSES) | {"synthetic"} == {b["dataset"] for b in data.BENCHMARKS.values()}
    for name in ("split_digits", "synthetic"):
        assert data.benchmark_classes(name) == data.make_stream(name, seed=0).info["n_classes_total"] == 10
    for name, b in data.BENCHMARKS.items():  # the benchmarks' own task counts fit their classes
        assert 1 <= b["n_tasks"] <= (data.max_tasks(name) or b["n_tasks"])
    assert data.max_tasks("split_fmnist") == 10 and data.max_tasks("permuted_fmnist") is None
    assert data.max_tasks("partition_fmnist") == data.distinct_halves(10) == 126
    assert data.distinct_halves(4) == 3 and data.distinct_halves(5) == 10  # {01|23, 02|13, 03|12}; C(5,2)


def test_param_range_declaration():
    from nscl.core.params import Param

    p = Param("k", 2, "int", "help", range="[1, inf)")
    assert p.bounds() == (1.0, float("inf"), True, False) and p.describe_range() == ">= 1"
    assert p.range_error(1) is None and p.range_error(0) == "must be >= 1" and p.range_error(None) is None
    q = Param("f", 0.5, "float", "help", range="(0, 1]")
    assert q.describe_range() == "in (0, 1]"
    assert [q.range_error(v) is None for v in (0.0, 1e-9, 1.0, 1.5, float("nan"))] == [False, True, True, False, False]
    lst = Param("l", [1, 2], "list[int]", "help", range="[1, inf)")
    assert lst.range_error([]) is None and lst.range_error([3, 0]) == "must hold values >= 1"
    assert Param("g", -1.0, "float", "help", range="(-inf, 0]").describe_range() == "<= 0"
    for bad in (dict(range="1..inf"), dict(range="[2, 1]"), dict(range="[5, inf)"), dict(type="str", default="x")):
        kw = {"name": "b", "default": 2, "type": "int", "help": "h", "range": "[1, inf)", **bad}
        with pytest.raises(ValueError, match="parameter 'b'"):
            Param(**kw)


def test_every_declared_default_is_valid():
    """Defaults pass their own ranges and choices (a declaration cannot contradict itself)."""
    assert config.validate({}) == config.defaults()
    assert sum(p.range is not None for p in config.PARAMS.values()) >= 25


class _ReadKeys(dict):
    """A config that remembers which keys were read (item access and ``get``)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.read = set()

    def __getitem__(self, k):
        self.read.add(k)
        return super().__getitem__(k)

    def get(self, k, default=None):
        self.read.add(k)
        return super().get(k, default)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_method_reads_every_parameter_it_declares(method, tiny_cfg, tmp_path, monkeypatch):
    """A declared parameter changes the run; one the method never reads would pass `-p` silently (no
    "does not read" warning) while changing nothing. Two tasks (the t > 0 branches), a small CNN with
    BatchNorm and EWC on it where the method declares `bn` (so `ewc_lambda` is read)."""
    import yaml

    from nscl.experiment import trainer

    yaml.add_representer(_ReadKeys, yaml.representer.SafeRepresenter.represent_dict, Dumper=yaml.SafeDumper)
    seen = []
    validate = config.validate
    monkeypatch.setattr(config, "validate", lambda cfg: seen.append(_ReadKeys(validate(cfg))) or seen[-1])
    declared = {p.name for p in METHODS[method].params}
    extra = {"bn": "ewc"} if "bn" in declared else {}
    cfg = tiny_cfg(method=method, n_tasks=2, model="cnn", cnn_channels=[4, 8], hidden=[16], checkpoint=False, **extra)
    trainer.Trainer(cfg, tmp_path).fit()
    assert declared - seen[-1].read == set(), f"{method} declares parameters it never reads"


def test_base_yaml_restates_no_code_default():
    """params/base.yaml holds only what differs from the code's defaults: a default changed in code is
    then never silently overridden by the file."""
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "params" / "base.yaml"
    d = config.defaults()
    same = sorted(k for k, v in config.load_file(path).items() if d[k] == v)
    assert not same, f"params/base.yaml restates the code's defaults of {same}"
