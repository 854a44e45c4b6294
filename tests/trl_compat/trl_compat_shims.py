"""Test-only shim: a pure-torch chunked log-prob function for TRL 1.15 on machines without Triton.

What it repairs. TRL 1.15.0 computes the training log-probabilities through a fused LM head
(``trl.trainer.utils.add_fused_lm_head``), which calls ``trl.trainer.utils._ChunkedLogProbFunction.apply(hidden,
weight, bias, targets, temperature, chunk_size, final_logit_softcapping, logit_scale, outputs)``. That name is
imported from ``trl/kernels/chunked_logprob.py``, which imports ``triton`` at module level; where ``import triton``
fails (the CPU torch wheel CI uses has no Triton), ``trl.trainer.utils`` catches the ``ImportError`` and sets the
name to ``None``, so every ``GRPOTrainer`` step fails with ``'NoneType' object has no attribute 'apply'``. TRL 1.16
folds the tiles in torch when Triton is missing, so only 1.15 needs this.

What it provides. ``ChunkedLogProbs``, a ``torch.autograd.Function`` with the same arguments and the same five
outputs as TRL 1.15's ``ChunkedLogProbFunction``: per-token log-probabilities of ``targets`` under the logits
``z = transform(hidden @ weight.T + bias)`` (``transform`` multiplies by ``logit_scale``, applies the optional
``softcap * tanh(. / softcap)`` and divides by ``temperature``), then the entropy, ``log(sum_v p_v^2)``, the mean
logit and whether the target is the (first) argmax, each only when named in ``outputs`` and ``None`` otherwise. The
``[N, V]`` logits are never held whole: tokens are processed in blocks of ``TOKEN_BLOCK`` rows and the vocabulary in
tiles of ``chunk_size`` columns, folded into a running log-sum-exp; the backward recomputes each tile and turns it
into the gradients of ``hidden``, ``weight`` and ``bias`` (fp32 accumulation), from the incoming gradients of the
log-probabilities and of the entropy (the other three outputs are not differentiable). The projection runs in the
autocast dtype when autocast is on, otherwise in ``hidden``'s dtype; everything after it runs in float32.

When it is active. ``install()`` does nothing unless the installed TRL distribution is 1.15.x. Even then it only
patches once ``trl.trainer.utils`` has been imported (a ``sys.meta_path`` hook waits for it, so nothing imports TRL
early), and only if TRL left ``_ChunkedLogProbFunction`` as ``None``, which is exactly TRL's own "``import triton``
failed" branch. With Triton importable, or on any other TRL, nothing is replaced. ``tests/conftest.py`` calls it for
the pytest process and, for TRL 1.15, prepends this directory to ``PYTHONPATH`` so that the ``sitecustomize.py``
next to this file installs the same hook in every Python subprocess the tests start (training scripts, ``accelerate
launch`` workers). ``trl_ext`` itself never imports this module.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import sys

#: Rows (tokens) per block; bounds a tile to TOKEN_BLOCK x chunk_size float32 values.
TOKEN_BLOCK = 1024
OPTIONAL_OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
_TARGET_MODULE = "trl.trainer.utils"


def trl_is_1_15() -> bool:
    """Whether the installed TRL distribution is a 1.15.x release (read from its metadata; TRL is not imported)."""
    try:
        version = importlib.metadata.version("trl")
    except importlib.metadata.PackageNotFoundError:
        return False
    return version.split(".")[:2] == ["1", "15"]


def _make_function():
    import torch

    def project(rows, weight, bias, start, end, compute_dtype, scale, softcap, inv_t):
        """Transformed float32 logits of one tile, and tanh(y / softcap) (for the backward) when softcapped."""
        y = rows @ weight[start:end].to(compute_dtype).t()
        if bias is not None:
            y = y + bias[start:end].to(compute_dtype)
        y = y.float() * scale
        if softcap is None:
            return y * inv_t, None
        squashed = torch.tanh(y / softcap)
        return softcap * squashed * inv_t, squashed

    def fp32_zeros_like(tensor):
        return torch.zeros(tensor.shape, device=tensor.device, dtype=torch.float32)

    class ChunkedLogProbs(torch.autograd.Function):
        @staticmethod
        def forward(
            ctx,
            hidden,
            weight,
            bias,
            targets,
            temperature,
            chunk_size,
            final_logit_softcapping=None,
            logit_scale=1.0,
            outputs=OPTIONAL_OUTPUTS,
        ):
            ctx.set_materialize_grads(False)
            device = hidden.device
            n_tokens, vocab = hidden.shape[0], weight.shape[0]
            if torch.is_autocast_enabled(device.type):
                compute_dtype = torch.get_autocast_dtype(device.type)
            else:
                compute_dtype = hidden.dtype
            transform = (float(logit_scale), final_logit_softcapping, 1.0 / temperature)

            def zeros():
                return torch.zeros(n_tokens, device=device, dtype=torch.float32)

            def minus_inf():
                return torch.full((n_tokens,), float("-inf"), device=device, dtype=torch.float32)

            # Running statistics relative to the running maximum m: s = sum e, xs = sum e*z, sq = sum e^2, e = exp(z-m)
            m, before_max = minus_inf(), minus_inf()
            s, xs, sq, z_sum, target_z = (zeros() for _ in range(5))
            with torch.no_grad():
                for r0 in range(0, n_tokens, TOKEN_BLOCK):
                    r1 = min(r0 + TOKEN_BLOCK, n_tokens)
                    rows = hidden[r0:r1].to(compute_dtype)
                    tgt = targets[r0:r1]
                    for v0 in range(0, vocab, chunk_size):
                        v1 = min(v0 + chunk_size, vocab)
                        z, _ = project(rows, weight, bias, v0, v1, compute_dtype, *transform)
                        new_m = torch.maximum(m[r0:r1], z.amax(dim=-1))
                        rescale = torch.exp(m[r0:r1] - new_m)
                        e = torch.exp(z - new_m[:, None])
                        s[r0:r1] = s[r0:r1] * rescale + e.sum(dim=-1)
                        if "entropy" in outputs:
                            xs[r0:r1] = xs[r0:r1] * rescale + (e * z).sum(dim=-1)
                        if "log_sum_sq_probs" in outputs:
                            sq[r0:r1] = sq[r0:r1] * rescale * rescale + (e * e).sum(dim=-1)
                        if "mean_logits" in outputs:
                            z_sum[r0:r1] += z.sum(dim=-1)
                        m[r0:r1] = new_m
                        column = torch.arange(v0, v1, device=device)
                        if "is_top1" in outputs:
                            # a tie with an earlier vocabulary entry is not a top-1 hit (argmax takes the first maximum)
                            earlier = z.masked_fill(column[None, :] >= tgt[:, None], float("-inf")).amax(dim=-1)
                            before_max[r0:r1] = torch.maximum(before_max[r0:r1], earlier)
                        inside = (tgt >= v0) & (tgt < v1)
                        picked = z.gather(-1, (tgt - v0).clamp(0, v1 - v0 - 1)[:, None]).squeeze(-1)
                        target_z[r0:r1] = torch.where(inside, picked, target_z[r0:r1])

            log_z = m + torch.log(s)
            logprobs = target_z - log_z
            entropy = log_z - xs / s if "entropy" in outputs else None
            log_sum_sq = torch.log(sq) - 2 * torch.log(s) if "log_sum_sq_probs" in outputs else None
            mean_logits = z_sum / vocab if "mean_logits" in outputs else None
            is_top1 = (target_z >= m) & (target_z > before_max) if "is_top1" in outputs else None

            ctx.save_for_backward(hidden, weight, bias, targets, log_z, log_z if entropy is None else entropy)
            ctx.compute_dtype = compute_dtype
            ctx.chunk_size = chunk_size
            ctx.transform = transform
            ctx.mark_non_differentiable(*(x for x in (log_sum_sq, mean_logits, is_top1) if x is not None))
            return logprobs, entropy, log_sum_sq, mean_logits, is_top1

        @staticmethod
        def backward(ctx, grad_logprobs, grad_entropy, *_):
            from trl.trainer.utils import maybe_gather_lm_head_ctx  # ZeRO-3 gathers the head here, as TRL does

            hidden, weight, bias, targets, log_z, entropy = ctx.saved_tensors
            compute_dtype, chunk_size, transform = ctx.compute_dtype, ctx.chunk_size, ctx.transform
            scale, softcap, inv_t = transform
            need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
            n_tokens = hidden.shape[0]
            with torch.no_grad(), maybe_gather_lm_head_ctx(weight, bias):
                vocab = weight.shape[0]
                grad_hidden = fp32_zeros_like(hidden) if need_hidden else None
                grad_weight = fp32_zeros_like(weight) if need_weight else None
                grad_bias = fp32_zeros_like(bias) if need_bias else None
                for r0 in range(0, n_tokens, TOKEN_BLOCK):
                    r1 = min(r0 + TOKEN_BLOCK, n_tokens)
                    rows = hidden[r0:r1].to(compute_dtype)
                    for v0 in range(0, vocab, chunk_size):
                        v1 = min(v0 + chunk_size, vocab)
                        z, squashed = project(rows, weight, bias, v0, v1, compute_dtype, *transform)
                        log_p = z - log_z[r0:r1, None]
                        p = torch.exp(log_p)
                        grad_z = torch.zeros_like(z)
                        if grad_logprobs is not None:
                            # d log p_target / d z_j = [j == target] - p_j
                            hit = torch.arange(v0, v1, device=z.device)[None, :] == targets[r0:r1, None]
                            grad_z += grad_logprobs[r0:r1, None].float() * (hit.float() - p)
                        if grad_entropy is not None:
                            # d H / d z_j = -p_j (log p_j + H)
                            grad_z -= grad_entropy[r0:r1, None].float() * p * (log_p + entropy[r0:r1, None])
                        grad_y = grad_z * inv_t
                        if squashed is not None:
                            grad_y = grad_y * (1 - squashed * squashed)
                        grad_y = grad_y * scale  # gradient with respect to hidden @ weight.T + bias
                        if grad_hidden is not None:
                            grad_hidden[r0:r1] += grad_y @ weight[v0:v1].float()
                        if grad_weight is not None:
                            grad_weight[v0:v1] += grad_y.t() @ rows.float()
                        if grad_bias is not None:
                            grad_bias[v0:v1] += grad_y.sum(dim=0)
            return (
                None if grad_hidden is None else grad_hidden.to(hidden.dtype),
                None if grad_weight is None else grad_weight.to(weight.dtype),
                None if grad_bias is None else grad_bias.to(bias.dtype),
                None,
                None,
                None,
                None,
                None,
                None,
            )

    return ChunkedLogProbs


_function = None


def chunked_logprob_function():
    """The shim's ``torch.autograd.Function`` (built on first use, so that importing this module needs no torch)."""
    global _function
    if _function is None:
        _function = _make_function()
    return _function


def _patch(module) -> None:
    if getattr(module, "_ChunkedLogProbFunction", "missing") is None:
        module._ChunkedLogProbFunction = chunked_logprob_function()


class _PatchAfterImport:
    """``sys.meta_path`` finder: lets ``trl.trainer.utils`` load normally, then patches it."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _TARGET_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return None
        original_exec = spec.loader.exec_module

        def exec_module(module):
            original_exec(module)
            _patch(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)

        spec.loader.exec_module = exec_module  # this spec's own loader instance
        return spec


def install() -> bool:
    """Arrange the patch for this process; True when TRL is 1.15 (whether or not it turns out to be needed)."""
    if not trl_is_1_15():
        return False
    module = sys.modules.get(_TARGET_MODULE)
    if module is not None:
        _patch(module)
    elif not any(isinstance(finder, _PatchAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchAfterImport())
    return True
