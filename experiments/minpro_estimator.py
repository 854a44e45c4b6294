"""MinPRO's weight as a gradient estimator on a tabular autoregressive policy: bias and variance, no training.

    python experiments/minpro_estimator.py    # 10 seeds x 2 directions x 6 drifts x 2 lengths: ~23 min on 2 shared cores

The design, arms, primary metric, seeds, minimum effect and controls are pre-registered in
``experiments/preregistered/minpro_estimator.py`` (committed before the final run), which also computes the verdict
stored in the JSON. In short: a Markov policy over 10 tokens with the count-up prefix reward has an exact J(pi), so
the **true gradient** is exact (autograd). The sampler mu follows the chain with probability ~0.6 per token; pi = mu +
drift * D, D random or the uphill direction grad J(mu). From 128 samples of mu per batch, the gradient of each arm's
surrogate (``token``, ``token_clipped`` = GRPO's clipped objective, ``minpro``, ``minpro_capped``,
``prefix_product``) and an ``on_policy`` reference; over 500 batches, the per-batch cosine to the true gradient, the
cosine of the mean and the relative variance. Results: docs/results.md ("MinPRO: ...").
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from preregistered import minpro_estimator as prereg

from trl_ext.compare import harness

harness.script_env()

RESULTS = Path(__file__).parent / "results"
WEIGHTINGS = ("token", "token_clipped", "minpro", "minpro_clipped", "minpro_capped", "prefix_product")
ESTIMATORS = (*WEIGHTINGS, "on_policy")
assert set(ESTIMATORS) == set(prereg.ARMS)


# Tabular Markov policy
def chain_target(length: int, vocab: int = 10, start: int = 0) -> torch.Tensor:
    """The count-up target s_t = (start + t + 1) mod vocab, t = 0..length-1."""
    return (start + 1 + torch.arange(length)) % vocab


def sampler_logits(length: int, vocab: int, target: torch.Tensor, skill: float, generator: torch.Generator):
    """(T, K, K) logits of mu: small random noise plus `skill` on the chain's next token after every previous token."""
    logits = 0.3 * torch.randn(length, vocab, vocab, generator=generator, dtype=torch.float64)
    logits[torch.arange(length), :, target] += skill
    return logits


def expected_reward(logits: torch.Tensor, target: torch.Tensor, start: int = 0) -> torch.Tensor:
    """J = (1/T) sum_t prod_{j<=t} pi(s_j | s_{j-1}, j): the exact expected prefix reward (differentiable)."""
    length = logits.shape[0]
    previous = torch.cat([torch.tensor([start]), target[:-1]])
    logp = torch.log_softmax(logits, dim=-1)[torch.arange(length), previous, target]
    return logp.cumsum(0).exp().mean()


def sample(logits: torch.Tensor, num: int, start: int, generator: torch.Generator) -> torch.Tensor:
    """(N, T) sequences from the Markov policy, first previous token = `start`."""
    length = logits.shape[0]
    out = torch.empty(num, length, dtype=torch.long)
    previous = torch.full((num,), start, dtype=torch.long)
    probs = torch.softmax(logits, dim=-1)
    for t in range(length):
        previous = torch.multinomial(probs[t, previous], 1, generator=generator).squeeze(1)
        out[:, t] = previous
    return out


def token_logps(logits: torch.Tensor, sequences: torch.Tensor, start: int) -> torch.Tensor:
    """(N, T) log pi(y_t | y_{t-1}, t)."""
    num, length = sequences.shape
    previous = torch.cat([torch.full((num, 1), start, dtype=torch.long), sequences[:, :-1]], dim=1)
    logp = torch.log_softmax(logits, dim=-1)
    return logp[torch.arange(length).expand(num, length), previous, sequences]


def prefix_reward(sequences: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N,) length of the prefix matching the target, / T."""
    return (sequences == target).long().cumprod(dim=1).sum(dim=1).double() / sequences.shape[1]


def prefix_weights(log_ratio: torch.Tensor, weighting: str) -> torch.Tensor:
    """(N, T) detached weights of each weighting from the (N, T) log-ratios of a batch."""
    from trl_ext.objectives.minpro import prefix_min_log_ratio

    valid = torch.ones_like(log_ratio, dtype=torch.bool)
    if weighting in ("token", "token_clipped", "on_policy"):
        return torch.ones_like(log_ratio)
    if weighting in ("minpro", "minpro_clipped"):
        return prefix_min_log_ratio(log_ratio, valid).exp()
    if weighting == "minpro_capped":
        return prefix_min_log_ratio(log_ratio, valid, cap_at_one=True).exp()
    if weighting == "prefix_product":
        exclusive = torch.cat([torch.zeros_like(log_ratio[:, :1]), log_ratio[:, :-1].cumsum(dim=1)], dim=1)
        return exclusive.clamp(-20, 20).exp()
    raise ValueError(f"unknown weighting {weighting!r}")


def batch_gradient(
    target_logits: torch.Tensor, sampler: torch.Tensor, sequences: torch.Tensor, target: torch.Tensor, weighting: str
) -> torch.Tensor:
    """Flattened gradient of -(1/N) sum_i sum_t sg(w_it) rho_it A_i for one batch sampled from `sampler`."""
    theta = target_logits.clone().requires_grad_(True)
    logp = token_logps(theta, sequences, 0)
    old = token_logps(sampler, sequences, 0)
    log_ratio = logp - old
    weights = prefix_weights(log_ratio.detach(), weighting)
    rewards = prefix_reward(sequences, target)
    advantages = (rewards - rewards.mean()) / (rewards.std() + 1e-4)
    ratio = log_ratio.exp()
    surrogate = ratio * advantages[:, None]
    if weighting.endswith(
        "_clipped"
    ):  # GRPO's objective (and MinPRO's weight on it): the pessimistic clipped surrogate, per token
        clipped = ratio.clamp(1 - prereg.CLIP_EPSILON, 1 + prereg.CLIP_EPSILON) * advantages[:, None]
        surrogate = torch.minimum(surrogate, clipped)
    loss = -(weights * surrogate).sum() / sequences.shape[0]
    (grad,) = torch.autograd.grad(loss, theta)
    return -grad.flatten()  # ascent direction, comparable with grad J


def uphill(sampler: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """grad J(mu) rescaled to unit root-mean-square over the logits (the scale of a standard normal draw)."""
    theta = sampler.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(expected_reward(theta, target), theta)
    return grad / grad.pow(2).mean().sqrt()


def measure(
    seed: int, length: int, drift: float, batches: int, num: int, skill: float, direction: str = "random"
) -> dict:
    generator = torch.Generator().manual_seed(seed * 1000 + length)
    vocab = 10
    target = chain_target(length, vocab)
    sampler = sampler_logits(length, vocab, target, skill, generator)
    move = torch.randn(sampler.shape, generator=generator, dtype=torch.float64)  # drawn in both: same samples after
    if direction == "improvement":
        move = uphill(sampler, target)
    elif direction != "random":
        raise ValueError(f"direction must be 'random' or 'improvement', got {direction!r}")
    policy = sampler + drift * move
    theta = policy.clone().requires_grad_(True)
    (true_grad,) = torch.autograd.grad(expected_reward(theta, target), theta)
    true_grad = true_grad.flatten()
    result: dict = {
        "seed": seed, "length": length, "drift": drift, "direction": direction, "J_sampler": expected_reward(sampler, target).item(),
        "J_policy": expected_reward(policy, target).item(),
    }  # fmt: skip
    grads: dict[str, list[torch.Tensor]] = {name: [] for name in ESTIMATORS}
    abs_log_ratio = []
    for _ in range(batches):
        sequences = sample(sampler, num, 0, generator)
        abs_log_ratio.append((token_logps(policy, sequences, 0) - token_logps(sampler, sequences, 0)).abs().mean())
        for name in WEIGHTINGS:
            grads[name].append(batch_gradient(policy, sampler, sequences, target, name))
        on_policy = sample(policy, num, 0, generator)
        grads["on_policy"].append(batch_gradient(policy, policy, on_policy, target, "on_policy"))
    result["mean_abs_log_ratio"] = torch.stack(abs_log_ratio).mean().item()
    for name, values in grads.items():
        stacked = torch.stack(values)
        mean = stacked.mean(0)
        cos = torch.nn.functional.cosine_similarity(stacked, true_grad[None], dim=1)
        spread = (stacked - mean).pow(2).sum(1).mean() / mean.pow(2).sum().clamp_min(1e-300)
        result[name] = {
            "per_batch_cosine": cos.mean().item(),
            "mean_gradient_cosine": torch.nn.functional.cosine_similarity(mean, true_grad, dim=0).item(),
            "relative_variance": spread.item(),
        }
    return result


def summarise(runs: list[dict]) -> list[dict]:
    """Mean and min-max over seeds per (direction, length, drift) and estimator."""
    rows = []
    for direction in prereg.DIRECTIONS:
        for length in sorted({run["length"] for run in runs}):
            for drift in sorted({run["drift"] for run in runs}):
                group = [
                    run
                    for run in runs
                    if run.get("direction", "random") == direction
                    and run["length"] == length
                    and run["drift"] == drift
                ]
                if not group:
                    continue
                row = {
                    "direction": direction, "length": length, "drift": drift, "seeds": len(group),
                    "mean_abs_log_ratio": statistics.fmean(run["mean_abs_log_ratio"] for run in group),
                }  # fmt: skip
                for name in ESTIMATORS:
                    row[name] = {
                        key: harness.spread([run[name][key] for run in group], count=False)
                        for key in ("per_batch_cosine", "mean_gradient_cosine", "relative_variance")
                    }
                rows.append(row)
    return rows


def plot(report: dict, path: Path) -> None:
    rows = report["summary"]
    panels = [(d, length) for d in prereg.DIRECTIONS for length in sorted({row["length"] for row in rows})]
    colors = {"token": "C0", "token_clipped": "C4", "minpro": "C1", "minpro_clipped": "C5", "minpro_capped": "C2"}
    colors["prefix_product"] = "C3"
    colors["on_policy"] = "black"
    with harness.figure(path, len(panels), 2, figsize=(12, 4.2 * len(panels)), squeeze=False) as (fig, grid):
        for (left, right), (direction, length) in zip(grid, panels):
            sub = [row for row in rows if row["length"] == length and row["direction"] == direction]
            x = [row["mean_abs_log_ratio"] for row in sub]
            for name in ESTIMATORS:
                style = {"linestyle": "--" if name == "on_policy" else "-", "color": colors[name], "label": name}
                cos = [row[name]["per_batch_cosine"] for row in sub]
                left.plot(x, [c["mean"] for c in cos], marker="o", **style)
                left.fill_between(x, [c["min"] for c in cos], [c["max"] for c in cos], color=colors[name], alpha=0.15)
                right.plot(x, [row[name]["relative_variance"]["mean"] for row in sub], marker="o", **style)
            left.set(title=f"{direction}, T = {length}: per-batch cosine to the true gradient", ylabel="cosine")
            left.set(xlabel="mean |log rho| of sampled tokens")
            right.set(title=f"{direction}, T = {length}: relative variance", xlabel="mean |log rho|", yscale="log")
            left.legend(fontsize=8)
            left.grid(alpha=0.3)
            right.grid(alpha=0.3)


def docs_tables(report: dict) -> str:
    """The markdown tables docs/results.md quotes, derived from the report alone (a test compares them)."""
    judged = report["verdict"]
    lines = [
        "| direction | pair (T = 12, far drifts) | mean difference [95% interval] | seeds in favour | verdict |",
        "|---|---|---|---|---|",
    ]
    for direction in prereg.DIRECTIONS:
        for pair, effect in judged[direction]["effects"].items():
            lines.append(
                f"| {direction} | `{pair}` | {effect['mean']:+.3f} [{effect['low']:+.3f}, {effect['high']:+.3f}] "
                f"| {effect['in_favour']}/{effect['n']} | {judged[direction]['verdicts'][pair]} |"
            )
    lines += ["", "| direction | control | value | held |", "|---|---|---|---|"]
    for direction in prereg.DIRECTIONS:
        checks = judged[direction]["controls"]
        far = sorted(checks["far_drifts_per_seed"].values())
        lines += [
            f"| {direction} | identical estimators at drift 0 | | {checks['identity_at_drift_0']} |",
            f"| {direction} | far drifts per seed (>= {prereg.MIN_FAR_DRIFTS}) | {far[0]}-{far[-1]} "
            f"| {checks['enough_far_drifts']} |",
            f"| {direction} | product / on-policy relative variance, largest drift (>= "
            f"{prereg.PRODUCT_VARIANCE_FACTOR:g}) | {checks['product_over_on_policy_variance_at_largest_drift']:.3g} "
            f"| {checks['product_variance_explodes']} |",
            f"| {direction} | on-policy minus `token` cosine, far drifts (>= {prereg.TOKEN_COSINE_LOSS}) "
            f"| {checks['on_policy_minus_token_cosine']:.3f} | {checks['token_loses_direction']} |",
        ]
    lines += ["", "| direction | T | drift | mean \\|log ρ\\| | " + " | ".join(f"`{a}`" for a in ESTIMATORS) + " |"]
    lines.append("|---|---|---|---|" + "---|" * len(ESTIMATORS))
    for row in report["summary"]:
        cells = " | ".join(f"{row[a]['per_batch_cosine']['mean']:.3f}" for a in ESTIMATORS)
        lines.append(
            f"| {row['direction']} | {row['length']} | {row['drift']:g} | {row['mean_abs_log_ratio']:.2f} | {cells} |"
        )
    return "\n".join(lines)


def print_summary(report: dict) -> None:
    for row in report["summary"]:
        cells = "  ".join(f"{name} {row[name]['per_batch_cosine']['mean']:.3f}" for name in ESTIMATORS)
        print(
            f"{row['direction']:>11} T={row['length']:>2} drift={row['drift']:<4} |lr|={row['mean_abs_log_ratio']:.3f}  {cells}"
        )
    for direction in prereg.DIRECTIONS:
        judged = report["verdict"][direction]
        for pair, effect in judged["effects"].items():
            print(f"{direction}: {pair}: {effect['mean']:+.4f} [{effect['low']:+.4f}, {effect['high']:+.4f}] "
                  f"({effect['in_favour']}/{effect['n']} seeds in favour) -> {judged['verdicts'][pair]}")  # fmt: skip
        print(f"{direction}: controls held: {judged['controls']['held']}; verdict: {judged['verdict']}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_common_args(parser, RESULTS / "minpro_estimator.json", seeds=prereg.SEEDS)
    parser.add_argument("--lengths", type=int, nargs="+", default=list(prereg.LENGTHS))
    parser.add_argument("--drifts", type=float, nargs="+", default=list(prereg.DRIFTS))
    parser.add_argument("--directions", nargs="+", default=list(prereg.DIRECTIONS), choices=prereg.DIRECTIONS)
    parser.add_argument("--batches", type=int, default=prereg.BATCHES)
    parser.add_argument("--num", type=int, default=prereg.SAMPLES_PER_BATCH, help="samples per batch (one group)")
    parser.add_argument("--skill", type=float, default=prereg.SKILL, help="sampler's logit bonus on the chain token")
    args = parser.parse_args(argv)
    if args.replot:
        report = harness.load_report(args.out)
    else:
        from trl_ext.training import set_threads

        set_threads(1)
        start = time.time()
        runs = [
            measure(seed, length, drift, args.batches, args.num, args.skill, direction)
            for seed in args.seeds
            for direction in args.directions
            for length in args.lengths
            for drift in args.drifts
        ]
        settings = {key: value for key, value in vars(args).items() if key not in ("out", "replot")}
        report = {"settings": settings, "preregistration": prereg.__doc__, "runs": runs,
                  "wall_seconds": time.time() - start}  # fmt: skip
    report["summary"] = summarise(report["runs"])
    report["verdict"] = prereg.judge(report)
    return harness.finish(args, report, argv, plot=plot, show=print_summary)


if __name__ == "__main__":
    main()
