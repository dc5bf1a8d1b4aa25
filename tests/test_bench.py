"""The e2e benchmark's records (not its timings): per-run fields, consistency, checkpoint size."""

from __future__ import annotations

import json

import pytest

from nscl.bench import e2e
from nscl.core.covariance import input_dim
from nscl.core.models import MultiHead, PreActResNet18, projected_layers


@pytest.mark.slow
def test_e2e_resnet_records_boundary_memory_and_checkpoint(tmp_path):
    out = tmp_path / "e2e.json"
    assert (
        e2e.main(
            [
                "--cases",
                "resnet18",
                "--width",
                "4",
                "--resnet-steps",
                "1",
                "--tasks",
                "2",
                "--threads",
                "1",
                "--settings",
                "finetune,principled_fast,principled_subset",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rep = json.loads(out.read_text())
    (case,) = rep["cases"]
    assert "partial" not in case and set(case["runs"]) == {"finetune", "principled_fast", "principled_subset"}
    fast = case["runs"]["principled_fast"]
    assert fast["params"]["cov_patches"] == 16 and fast["params"]["eigen_update"] == "nested"
    for r in case["runs"].values():
        assert len(r["tasks"]) == 2 and r["peak_host_mb"] > 50 and r["peak_device_mb"] is None
        for t in r["tasks"]:
            # the pass scaled to the recipe's 5000 samples per task, or to the cov_samples subset of them
            seen = 1250 if r["params"]["cov_samples"] else 5000
            assert t["boundary_s"] == pytest.approx(t["covariance_s"] / t["train_samples"] * seen + t["eigen_s"])
            assert t["boundary_epoch_ratio"] == pytest.approx(t["boundary_s"] / (t["s_per_step"] * 157))
        # the checkpoint holds at least every layer's float64 covariance (sum of d^2 x 8 bytes)
        net = MultiHead(PreActResNet18(3, 4), 32, [10])
        cov_bytes = sum(8 * input_dim(m) ** 2 for m in projected_layers(net).values())
        assert r["checkpoint_bytes"] > 0.9 * cov_bytes
        assert r["projected_full_run_s"]["extrapolated"] is True
    # nested keeps the bases in the checkpoint as well (path-dependent): larger than finetune's
    assert fast["checkpoint_bytes"] > case["runs"]["finetune"]["checkpoint_bytes"]
    assert set(case["step_ratio_vs_plain"]) == {"finetune", "principled_fast", "principled_subset"}
    assert case["step_ratio_vs_plain"]["finetune"] == 1.0


@pytest.mark.slow
def test_boundary_estimators_are_exact_when_nothing_is_left_out():
    """A subset or patch limit at least the data size reproduces the exact pass (same r, zero error);
    a real subset does not, and every reported number is a plain float."""
    from nscl.bench import boundary

    out = boundary.estimators(4, 48, [10_000, 2], [48, 12])
    exact_r = {n: v["r"] for n, v in out["exact"]["layers"].items()}
    for name in ("per_sample_patches10000", "per_sample_samples48"):
        v = out["variants"][name]
        assert v["max_abs_dr_over_d"] == 0.0
        assert all(layer["r"] == exact_r[n] and layer["cov_rel_err"] < 1e-12 for n, layer in v["layers"].items())
    assert out["variants"]["per_sample_patches2"]["layers"]["backbone.layer1.0.conv1"]["cov_rel_err"] > 1e-3
    assert all(isinstance(x, float) for v in out["variants"].values() for k, x in v.items() if k != "layers")
    json.dumps(out)  # serialisable as is


def test_boundary_run_settings_accept_the_rule_keys():
    from nscl.bench import boundary

    cfg = boundary._principled(model="cnn", nullspace_rule="a_min", a=10.0, a_min_floor="none", cov_patches=16)
    assert (cfg["nullspace_rule"], cfg["a_min_floor"], cfg["covariance"], cfg["bn"]) == (
        "a_min",
        "none",
        "per_sample",
        "freeze",
    )
    assert boundary._principled()["nullspace_rule"] == boundary.RULE.kind
