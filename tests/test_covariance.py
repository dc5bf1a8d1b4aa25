"""Layer-input covariance (nscl.core.covariance) against brute force: explicit loops, conv output."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nscl.core.covariance import Covariance, input_dim, layer_input_rows


def brute_patches(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """im2col by explicit loops: one row per (sample, out_y, out_x), features in (C, kh, kw) order."""
    B, C, H, W = x.shape
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    ph, pw = conv.padding
    dh, dw = conv.dilation
    Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    rows = []
    for b in range(B):
        for oy in range(Ho):
            for ox in range(Wo):
                patch = []
                for c in range(C):
                    for i in range(kh):
                        for j in range(kw):
                            yy, xx = oy * sh - ph + i * dh, ox * sw - pw + j * dw
                            inside = 0 <= yy < H and 0 <= xx < W
                            patch.append(x[b, c, yy, xx].item() if inside else 0.0)
                if conv.bias is not None:
                    patch.append(1.0)
                rows.append(patch)
    return torch.tensor(rows, dtype=torch.float64)


CONVS = [
    dict(in_channels=2, out_channels=3, kernel_size=3, stride=1, padding=1, dilation=1, bias=False),
    dict(in_channels=2, out_channels=4, kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1), bias=False),
    dict(in_channels=3, out_channels=2, kernel_size=2, stride=3, padding=0, dilation=2, bias=True),
    dict(in_channels=1, out_channels=2, kernel_size=1, stride=2, padding=0, dilation=1, bias=False),
]


@pytest.mark.parametrize(
    "spec", CONVS, ids=lambda s: f"k{s['kernel_size']}s{s['stride']}p{s['padding']}d{s['dilation']}b{int(s['bias'])}"
)
@pytest.mark.parametrize("mode", ["per_sample", "batch_mean"])
def test_conv_covariance_equals_brute_force(spec, mode):
    torch.manual_seed(0)
    conv = nn.Conv2d(**spec).double()
    batches = [torch.randn(3, spec["in_channels"], 7, 6, dtype=torch.float64) for _ in range(2)]
    cov = Covariance({"c": conv}, mode)
    cov.update(conv, batches)

    S, n = torch.zeros(input_dim(conv), input_dim(conv), dtype=torch.float64), 0
    for x in batches:
        src = x.mean(0, keepdim=True) if mode == "batch_mean" else x
        rows = brute_patches(conv, src)
        S += rows.T @ rows
        n += rows.shape[0]
    assert cov.counts["c"] == n
    torch.testing.assert_close(cov.matrix("c"), S / n, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        layer_input_rows(conv, batches[0], mode).double(),
        brute_patches(conv, batches[0].mean(0, keepdim=True) if mode == "batch_mean" else batches[0]),
    )


@pytest.mark.parametrize(
    "spec", CONVS, ids=lambda s: f"k{s['kernel_size']}s{s['stride']}d{s['dilation']}b{int(s['bias'])}"
)
def test_conv_rows_reproduce_conv_output(spec):
    """Feature order matches weight.view(out, -1): [W b] @ [patch; 1] is the conv output."""
    torch.manual_seed(1)
    conv = nn.Conv2d(**spec).double()
    x = torch.randn(2, spec["in_channels"], 7, 6, dtype=torch.float64)
    rows = layer_input_rows(conv, x, "per_sample")  # (B*L, d)
    w = conv.weight.reshape(conv.out_channels, -1)
    if conv.bias is not None:
        w = torch.cat([w, conv.bias[:, None]], 1)
    y = conv(x)  # (B, out, Ho, Wo)
    expect = y.permute(0, 2, 3, 1).reshape(-1, conv.out_channels)  # rows ordered (b, oy, ox)
    torch.testing.assert_close(rows @ w.T, expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("mode", ["per_sample", "batch_mean"])
def test_linear_covariance_equals_brute_force(bias, mode):
    torch.manual_seed(2)
    lin = nn.Linear(5, 3, bias=bias).double()
    batches = [torch.randn(b, 5, dtype=torch.float64) for b in (4, 7, 1)]
    cov = Covariance({"l": lin}, mode)
    cov.update(lin, batches[:2])
    cov.update(lin, batches[2:])  # a second "task" adds to the same sums, weighted by rows
    S, n = torch.zeros(5 + bias, 5 + bias, dtype=torch.float64), 0
    for x in batches:
        vecs = [x.mean(0)] if mode == "batch_mean" else list(x)
        for v in vecs:
            v = torch.cat([v, torch.ones(1, dtype=torch.float64)]) if bias else v
            S += torch.outer(v, v)
            n += 1
    assert cov.counts["l"] == n
    torch.testing.assert_close(cov.matrix("l"), S / n, rtol=1e-12, atol=1e-12)
    assert input_dim(lin) == 5 + bias


def test_float32_inputs_accumulate_in_float64_and_state_roundtrip():
    torch.manual_seed(3)
    lin = nn.Linear(4, 2, bias=False)
    x = torch.randn(6, 4)
    cov = Covariance({"l": lin})
    cov.update(lin, [x])
    assert cov.matrix("l").dtype == torch.float64
    torch.testing.assert_close(cov.matrix("l"), x.double().T @ x.double() / 6)
    other = Covariance({"l": lin})
    other.load_state_dict(cov.state_dict())
    torch.testing.assert_close(other.matrix("l"), cov.matrix("l"), rtol=0, atol=0)
    assert other.counts == cov.counts
    # a layer that saw nothing has a zero covariance of the right size
    assert torch.equal(Covariance({"l": lin}).matrix("l"), torch.zeros(4, 4, dtype=torch.float64))


# ---- cheaper unbiased estimates ----------------------------------------------------------------
def test_patch_subset_is_unbiased_and_keeps_k_positions_per_sample():
    """``patches=k``: each sample contributes k of its L patch rows (a uniform k-subset), counts grow
    by k per sample, and the average of many estimates converges to the exact covariance."""
    torch.manual_seed(5)
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False).double()
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64) + 0.5  # L = 25 positions per sample
    exact = Covariance({"c": conv})
    exact.update(conv, [x])
    full_rows = layer_input_rows(conv, x).reshape(4, 25, -1)
    g = torch.Generator().manual_seed(0)
    k, draws = 5, 400
    mean = torch.zeros_like(exact.matrix("c"))
    single_err = []
    for _ in range(draws):
        est = Covariance({"c": conv}, patches=k)
        est.update(conv, [x], generator=g)
        assert est.counts["c"] == 4 * k
        rows = layer_input_rows(conv, x, patches=k, generator=torch.Generator().manual_seed(1)).reshape(4, k, -1)
        for b in range(4):  # every kept row is one of that sample's own patches, none twice
            match = (rows[b][:, None, :] == full_rows[b][None, :, :]).all(-1)
            assert (match.sum(1) == 1).all() and match.any(0).sum() == k
        mean += est.matrix("c") / draws
        single_err.append((est.matrix("c") - exact.matrix("c")).norm().item())
    ref = exact.matrix("c").norm().item()
    err = (mean - exact.matrix("c")).norm().item() / ref
    assert err < 0.05, err  # Monte-Carlo error ~ single-draw error / sqrt(400)
    assert min(single_err) / ref > 4 * err  # ... while single draws really are random
    # k >= L, or batch_mean: the exact rows
    same = Covariance({"c": conv}, patches=25)
    same.update(conv, [x], generator=g)
    assert torch.equal(same.matrix("c"), exact.matrix("c"))
    torch.testing.assert_close(
        layer_input_rows(conv, x, "batch_mean", patches=2), layer_input_rows(conv, x, "batch_mean"), rtol=0, atol=0
    )


def test_weighted_pass_counts_as_the_full_task():
    """``weight``: a subset pass enters as if it had the task's full size (rows and sums scaled)."""
    lin = nn.Linear(3, 2, bias=True).double()
    a, b = torch.randn(10, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    cov = Covariance({"l": lin})
    cov.update(lin, [a])
    cov.update(lin, [b], weight=2.5)  # 4 samples standing for 10
    ra, rb = layer_input_rows(lin, a), layer_input_rows(lin, b)
    expect = (ra.T @ ra + 2.5 * rb.T @ rb) / 20
    assert cov.counts["l"] == pytest.approx(20.0)
    torch.testing.assert_close(cov.matrix("l"), expect, rtol=1e-12, atol=1e-12)
