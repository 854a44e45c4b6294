"""The TRL 1.15 test shim (tests/trl_compat/trl_compat_shims.py) against full-logit reference computations.

The shim is pure torch, so these run under any TRL; they check it before it stands in for TRL's Triton kernel.
"""

from __future__ import annotations

import types

import pytest
import torch
import trl_compat_shims

ALL_OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def _reference(hidden, weight, bias, targets, temperature, softcap, scale):
    y = hidden @ weight.t()
    if bias is not None:
        y = y + bias
    y = y * scale
    if softcap is not None:
        y = softcap * torch.tanh(y / softcap)
    z = y / temperature
    log_p = torch.log_softmax(z, dim=-1)
    logprobs = log_p.gather(-1, targets[:, None]).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    log_sum_sq = torch.logsumexp(2 * log_p, dim=-1)
    is_top1 = z.argmax(-1) == targets
    return logprobs, entropy, log_sum_sq, z.mean(-1), is_top1


@pytest.mark.parametrize(
    ("softcap", "scale", "with_bias"), [(None, 1.0, False), (3.0, 0.7, True)], ids=["plain", "softcap-scale-bias"]
)
def test_matches_full_logits_values_and_gradients(monkeypatch, softcap, scale, with_bias):
    monkeypatch.setattr(trl_compat_shims, "TOKEN_BLOCK", 4)  # several token blocks and vocabulary tiles
    function = trl_compat_shims.chunked_logprob_function()
    generator = torch.Generator().manual_seed(0)
    n, h, v = 11, 6, 13
    hidden = torch.randn(n, h, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(v, generator=generator, dtype=torch.float64, requires_grad=True) if with_bias else None
    targets = torch.randint(0, v, (n,), generator=generator)
    targets[0] = int((hidden[0] @ weight.t()).argmax())  # at least one top-1 hit

    got = function.apply(hidden, weight, bias, targets, 0.8, 5, softcap, scale, ALL_OUTPUTS)
    expected = _reference(hidden, weight, bias, targets, 0.8, softcap, scale)
    for a, b in zip(got[:4], expected[:4], strict=True):
        torch.testing.assert_close(a, b.float(), atol=1e-5, rtol=0)
    assert torch.equal(got[4], expected[4]) and got[4].any()

    # The loss uses log-probs and entropy; both gradients flow, the other outputs are not differentiable
    w_lp, w_ent = torch.randn(n, generator=generator), torch.randn(n, generator=generator)
    params = [hidden, weight] + ([bias] if with_bias else [])
    grads = torch.autograd.grad((got[0] * w_lp + got[1] * w_ent).sum(), params)
    expected_grads = torch.autograd.grad((expected[0] * w_lp + expected[1] * w_ent).sum(), params)
    for a, b in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert not any(x.requires_grad for x in got[2:])


def test_ties_empty_batch_and_requested_outputs_only():
    function = trl_compat_shims.chunked_logprob_function()
    weight = torch.tensor([[1.0], [1.0], [0.0]], requires_grad=True)  # entries 0 and 1 tie for the maximum
    hidden = torch.ones(2, 1, requires_grad=True)
    logprobs, entropy, log_sum_sq, mean_logits, is_top1 = function.apply(
        hidden, weight, None, torch.tensor([0, 1]), 1.0, 2, None, 1.0, ("log_probs", "is_top1")
    )
    assert is_top1.tolist() == [True, False]  # the first of tied maxima is the argmax
    assert entropy is None and log_sum_sq is None and mean_logits is None
    logprobs.sum().backward()
    assert torch.isfinite(weight.grad).all() and torch.isfinite(hidden.grad).all()

    empty = function.apply(
        hidden[:0], weight, None, torch.tensor([], dtype=torch.long), 1.0, 2, None, 1.0, ALL_OUTPUTS
    )
    assert empty[0].shape == (0,)
    # an all-masked micro-batch still back-propagates (TRL scatters the empty result into zeros)
    torch.zeros(3).masked_scatter(torch.zeros(3, dtype=torch.bool), empty[0]).sum().backward()


def test_patch_only_replaces_the_missing_kernel(monkeypatch):
    missing = types.SimpleNamespace(_ChunkedLogProbFunction=None)
    trl_compat_shims._patch(missing)
    assert missing._ChunkedLogProbFunction is trl_compat_shims.chunked_logprob_function()

    kernel = object()  # Triton imported: TRL's own kernel stays
    present = types.SimpleNamespace(_ChunkedLogProbFunction=kernel)
    trl_compat_shims._patch(present)
    assert present._ChunkedLogProbFunction is kernel

    monkeypatch.setattr(trl_compat_shims, "trl_is_1_15", lambda: False)
    assert trl_compat_shims.install() is False


def test_installed_exactly_when_trl_1_15_lacks_triton():
    import importlib.util

    import trl.trainer.utils as utils

    installed = getattr(utils, "_ChunkedLogProbFunction", None) is trl_compat_shims.chunked_logprob_function()
    expected = trl_compat_shims.trl_is_1_15() and importlib.util.find_spec("triton") is None
    assert installed == expected
