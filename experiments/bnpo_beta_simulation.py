"""BNPO's variance claim without an LLM: is the method-of-moments Beta normaliser at the gradient-variance minimum?

    python experiments/bnpo_beta_simulation.py          # 10 seeds x 4 models x 2 skewed populations: ~12 min
    python experiments/bnpo_beta_simulation.py --seeds 100 --batches 1000 --out /tmp/pilot.json   # a quick look

The design, claims, seeds, minimum effect, tie band, controls and verdict code are pre-registered in
``experiments/preregistered/bnpo_variance.py`` (committed before the final run). In short (arXiv 2506.02864): batches
of 32 prompts x 16 binary rewards with *exact* score vectors, so every advantage's gradient g is computed on the same
rewards and scores. Policy models ``shared_noiseE`` (the paper's assumptions: one success direction and a
reward-irrelevant part of energy E in {0, 1, 64}) and ``tabular`` (32 fixed prompts); success rates from
``POPULATIONS`` (the skewed two by default); advantages ``grpo``, ``bnpo`` (the shipped per-batch fit) and 1 /
f_Beta(p_hat; alpha, beta) on the log grid ``GRID``. RV = E||g - E g||^2 / ||E g||^2, ||E g||^2 without bias, on all
batches and on each half (even and odd batches): the grid minimum is selected on one half and scored on the other.
Results: docs/results.md ("BNPO: ..."). Writes ``experiments/results/bnpo_beta_simulation.json``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

from preregistered import bnpo_variance as prereg

from trl_ext.compare import harness

harness.script_env()

RESULTS = Path(__file__).parent / "results"
PROMPTS, NUM_GENERATIONS = 32, 16
NUISANCE_DIM = 8
GRID = [2.0 ** (k / 4) for k in range(-8, 13)]
POPULATIONS = {
    "hard_skewed": (0.5, 3.0), "easy_skewed": (3.0, 0.5), "uniform": (1.0, 1.0), "bell": (2.0, 2.0),
    "u_shaped": (0.5, 0.5),
}  # fmt: skip
SKEWED = ("hard_skewed", "easy_skewed")
#: Policy models: ``tabular`` and ``shared`` with E||z - mu||^2 (the reward-irrelevant score energy) 0, 1 and 64.
MODELS = ("tabular", "shared_noise0", "shared_noise1", "shared_noise64")


def grid_weights(alphas: list[float], betas: list[float], num_generations: int = NUM_GENERATIONS):
    """(len(alphas) * len(betas), G + 1) float64 weights 1 / f_Beta(k / G; alpha, beta) at every possible group
    success rate k / G (the package's ``beta_log_pdf``), row index ``ia * len(betas) + ib``.

    At p_hat in {0, 1} the weight multiplies y - p_hat = 0; it is set to 0 there to avoid inf * 0."""
    import torch

    from trl_ext.advantages.beta_normalization import beta_log_pdf

    rates = torch.arange(num_generations + 1, dtype=torch.float64) / num_generations
    rows = []
    for alpha in alphas:
        for beta in betas:
            weights = torch.exp(-beta_log_pdf(rates, alpha, beta))
            weights[0] = weights[-1] = 0.0
            rows.append(weights)
    return torch.stack(rows)


def paper_objective(a: float, b: float, alpha: float, beta: float) -> float:
    """E_{p ~ Beta(a, b)} [p (1 - p) / f_Beta(p; alpha, beta)^2], the density-normalised second moment the paper
    minimises (closed form; inf where the integral diverges)."""

    def log_beta_fn(x: float, y: float) -> float:
        return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)

    x, y = a + 3 - 2 * alpha, b + 3 - 2 * beta
    if x <= 0 or y <= 0:
        return math.inf
    return math.exp(2 * log_beta_fn(alpha, beta) + log_beta_fn(x, y) - log_beta_fn(a, b))


def relative_variance(sum_g, sum_sq, n: int):
    """Unbiased pieces from running sums over n batches: (tr Cov, ||E g||^2, RV = tr Cov / ||E g||^2); any leading
    dimensions of ``sum_g`` (..., D) and ``sum_sq`` (...) are kept."""
    mean = sum_g / n
    trace = (sum_sq - n * (mean**2).sum(-1)) / (n - 1)
    signal = (mean**2).sum(-1) - trace / n
    return trace, signal, trace / signal


def simulate(model: str, a: float, b: float, seed: int, num_batches: int, chunk: int = 500) -> dict:
    """One (model, population, seed) cell: relative variance of every advantage on the same batches."""
    import torch

    from trl_ext.advantages.beta_normalization import beta_normalized_advantages
    from trl_ext.advantages.grpo import grpo_advantages

    gen = torch.Generator().manual_seed(seed)
    population = torch.distributions.Beta(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    torch.manual_seed(seed)  # Beta sampling uses the global generator
    fixed_rates = population.sample((PROMPTS,)) if model == "tabular" else None
    dim = PROMPTS if model == "tabular" else 1 + NUISANCE_DIM
    noise_energy = 0.0 if model == "tabular" else float(model.removeprefix("shared_noise"))
    weights = grid_weights(GRID, GRID)  # (n_grid, G + 1)
    arms = ["grpo", "bnpo"]
    n_arms = len(arms) + weights.shape[0]
    sum_g = torch.zeros(n_arms, dim, dtype=torch.float64)
    sum_sq = torch.zeros(n_arms, dtype=torch.float64)
    half_g = torch.zeros(2, n_arms, dim, dtype=torch.float64)
    half_sq = torch.zeros(2, n_arms, dtype=torch.float64)
    fits: list[tuple[float, float]] = []
    mixed = 0.0
    one = torch.ones(1, dtype=torch.float64)
    done = 0
    while done < num_batches:
        n = min(chunk, num_batches - done)
        rates = fixed_rates.expand(n, PROMPTS) if fixed_rates is not None else population.sample((n, PROMPTS))
        rewards = torch.rand(n, PROMPTS, NUM_GENERATIONS, generator=gen, dtype=torch.float64) < rates[..., None]
        rewards = rewards.double()
        # Exact scores s_ij (n, B, G, D).
        scores = torch.zeros(n, PROMPTS, NUM_GENERATIONS, dim, dtype=torch.float64)
        centred_true = rewards - rates[..., None]
        if model == "tabular":
            index = torch.arange(PROMPTS)
            scores[:, index, :, index] = centred_true[:, index, :].permute(1, 0, 2)
        else:
            scores[..., 0] = centred_true
            scores[..., 1:] = math.sqrt(noise_energy / NUISANCE_DIM) * torch.randn(
                n, PROMPTS, NUM_GENERATIONS, NUISANCE_DIM, generator=gen, dtype=torch.float64
            )
        p_hat = rewards.mean(-1)  # (n, B)
        counts = rewards.sum(-1).long()  # k = G p_hat
        mixed += float(((counts > 0) & (counts < NUM_GENERATIONS)).double().mean()) * n
        # Per-group vectors v_j = sum_i (y_ij - p_hat_j) s_ij / (B G); any group-weighted advantage gives sum_j w_j v_j.
        v = torch.einsum("nbg,nbgd->nbd", rewards - p_hat[..., None], scores) / (PROMPTS * NUM_GENERATIONS)
        grid_g = torch.einsum("anb,nbd->and", weights[:, counts], v)  # (n_grid, n, D)
        package_g = torch.zeros(2, n, dim, dtype=torch.float64)
        for t in range(n):
            flat = rewards[t].reshape(-1)
            grpo, _ = grpo_advantages(flat.unsqueeze(1), one, NUM_GENERATIONS)
            bnpo, fit, _ = beta_normalized_advantages(flat, NUM_GENERATIONS)
            fits.append((fit.alpha, fit.beta))
            flat_scores = scores[t].reshape(-1, dim)
            package_g[0, t] = grpo.double() @ flat_scores / (PROMPTS * NUM_GENERATIONS)
            package_g[1, t] = bnpo @ flat_scores / (PROMPTS * NUM_GENERATIONS)
        all_g = torch.cat([package_g, grid_g], dim=0)
        sum_g += all_g.sum(1)
        sum_sq += (all_g**2).sum(-1).sum(1)
        for half in (0, 1):  # halves A and B: batches of even and odd index
            mask = (torch.arange(done, done + n) % 2) == half
            half_g[half] += all_g[:, mask].sum(1)
            half_sq[half] += (all_g[:, mask] ** 2).sum(-1).sum(1)
        done += n
    trace, signal, rv = relative_variance(sum_g, sum_sq, num_batches)
    half_rv = [relative_variance(half_g[h], half_sq[h], (num_batches + 1 - h) // 2)[2] for h in (0, 1)]
    second_moment = sum_sq / num_batches
    n_grid = len(GRID)
    grid_rv = rv[2:].view(n_grid, n_grid)
    best = int(torch.argmin(grid_rv))
    best_alpha, best_beta = GRID[best // n_grid], GRID[best % n_grid]
    grid_m2 = second_moment[2:].view(n_grid, n_grid)
    best_m2 = int(torch.argmin(grid_m2))
    fit_alpha = statistics.fmean(f[0] for f in fits)
    fit_beta = statistics.fmean(f[1] for f in fits)
    reinforce = GRID.index(1.0) * n_grid + GRID.index(1.0)
    # The grid point nearest the mean fit (in log space): a fixed normaliser at the fit's location, without the
    # batch-to-batch refit (whose varying B(alpha, beta) rescales the whole gradient).
    near_a = min(range(n_grid), key=lambda i: abs(math.log(GRID[i] / fit_alpha)))
    near_b = min(range(n_grid), key=lambda i: abs(math.log(GRID[i] / fit_beta)))
    near_rv = float(grid_rv[near_a, near_b])
    return {
        "rv": {"grpo": float(rv[0]), "bnpo": float(rv[1]), "reinforce": float(rv[2 + reinforce])},
        "grid_rv": grid_rv.tolist(), "grid_min": {"alpha": best_alpha, "beta": best_beta, "rv": float(grid_rv.min())},
        "bnpo_over_grid_min": float(rv[1] / grid_rv.min()), "bnpo_over_grpo": float(rv[1] / rv[0]),
        "bnpo_over_reinforce": float(rv[1] / rv[2 + reinforce]),
        "grpo_over_reinforce": float(rv[0] / rv[2 + reinforce]),
        "fixed_at_fit_over_grid_min": near_rv / float(grid_rv.min()), "bnpo_over_fixed_at_fit": float(rv[1]) / near_rv,
        "fit_mean": {"alpha": fit_alpha, "beta": fit_beta},
        "log_distance_fit_to_grid_min": math.hypot(
            math.log(fit_alpha) - math.log(best_alpha), math.log(fit_beta) - math.log(best_beta)
        ),
        "second_moment_grid_argmin": {"alpha": GRID[best_m2 // n_grid], "beta": GRID[best_m2 % n_grid]},
        "frac_mixed_groups": mixed / num_batches,
        "fixed_rates": fixed_rates.tolist() if fixed_rates is not None else None,
        "heldout": heldout_folds(half_rv, GRID),
    }  # fmt: skip


def heldout_folds(half_rv, grid: list[float]) -> list[dict]:
    """Selection on one half, scoring on the other (both ways). ``half_rv``: two (2 + n_grid^2,) RVs, rows ``grpo``,
    ``bnpo``, then the grid (row ``ia * n + ib``); a grid point whose signal estimate is not positive on the selecting
    half cannot be selected."""
    import torch

    n = len(grid)
    folds = []
    for select, score in ((0, 1), (1, 0)):
        chosen = half_rv[select][2:]
        chosen = torch.where(chosen > 0, chosen, torch.tensor(float("inf"), dtype=chosen.dtype))
        best = int(torch.argmin(chosen))
        scored = half_rv[score][2:]
        positive = scored[scored > 0]
        folds.append({
            "select_half": "AB"[select], "selected": {"alpha": grid[best // n], "beta": grid[best % n]},
            "rv_selected": float(scored[best]), "rv_bnpo": float(half_rv[score][1]),
            "rv_grpo": float(half_rv[score][0]), "rv_score_min": float(positive.min()) if len(positive) else -1.0,
        })  # fmt: skip
    return folds


def paper_control(a: float, b: float, seed: int) -> dict:
    """The paper's objective on the grid (closed form) and ``fit_beta`` on 10^6 true success rates."""
    import torch

    from trl_ext.advantages.beta_normalization import fit_beta

    values = [[paper_objective(a, b, alpha, beta) for beta in GRID] for alpha in GRID]
    flat = [(values[i][j], i, j) for i in range(len(GRID)) for j in range(len(GRID))]
    _, i, j = min(flat)
    torch.manual_seed(seed)
    rates = torch.distributions.Beta(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    fit = fit_beta(rates.sample((1_000_000,)))
    theory = (1 + a / 3, 1 + b / 3)
    step = math.log(2.0) / 4
    return {
        "theory": {"alpha": theory[0], "beta": theory[1]},
        "paper_objective_grid_argmin": {"alpha": GRID[i], "beta": GRID[j]},
        "argmin_within_one_grid_step": abs(math.log(GRID[i] / theory[0])) <= step + 1e-9
        and abs(math.log(GRID[j] / theory[1])) <= step + 1e-9,
        "fit_on_true_rates": {"alpha": fit.alpha, "beta": fit.beta},
        "fit_within_2pct": abs(fit.alpha / theory[0] - 1) < 0.02 and abs(fit.beta / theory[1] - 1) < 0.02,
    }


SUMMARY_KEYS = ("bnpo_over_grpo", "bnpo_over_reinforce", "grpo_over_reinforce", "bnpo_over_grid_min")
SUMMARY_KEYS = (*SUMMARY_KEYS, "bnpo_over_fixed_at_fit", "log_distance_fit_to_grid_min", "frac_mixed_groups")


def bnpo_over_heldout_minimum(run: dict) -> float | None:
    """RV(bnpo) / RV(the grid point selected on the other half), geometric mean over the two folds."""
    difference = prereg.heldout_difference(run)
    return None if difference is None else math.exp(-difference)


def summarise(runs: list[dict]) -> dict:
    """Per model and population: the spread over seeds of every ratio, the held-out ratio, fits and minima."""
    summary: dict = {}
    for model in MODELS:
        for name in POPULATIONS:
            cells = [run for run in runs if run["model"] == model and run["population"] == name]
            if not cells:
                continue
            row = {key: harness.spread([cell[key] for cell in cells], count=False) for key in SUMMARY_KEYS}
            row["bnpo_over_heldout_minimum"] = harness.spread(
                [bnpo_over_heldout_minimum(c) for c in cells], count=False
            )
            row["selection_cost"] = harness.spread([prereg.selection_cost(c) for c in cells], count=False)
            for key in ("alpha", "beta"):
                row[f"fit_{key}"] = harness.spread([c["fit_mean"][key] for c in cells], count=False)
            row["grid_min"] = [(c["grid_min"]["alpha"], c["grid_min"]["beta"]) for c in cells]
            row["heldout_selected"] = [
                (f["selected"]["alpha"], f["selected"]["beta"]) for c in cells for f in c["heldout"]
            ]
            summary[f"{model} / {name}"] = row
    return summary


def judge(report: dict) -> dict:
    return prereg.judge_simulation(report)


def docs_tables(report: dict) -> str:
    """The markdown tables docs/results.md quotes, derived from the report alone (a test compares them)."""
    judged = report["verdict"]
    lines = [
        "| model, population | BNPO fit (alpha, beta) | RV bnpo / grpo | `below_grpo`: log-RV reduction [95% interval], "
        "seeds in favour | RV bnpo / held-out minimum | `at_minimum`: log-RV difference [95% interval], seeds in favour |",
        "|---|---|---|---|---|---|",
    ]
    for key, cell in judged["cells"].items():
        row = report["summary"][key]
        below, at_min = cell["effects"]["below_grpo"], cell["effects"]["at_minimum"]
        a, b = POPULATIONS[key.split(" / ")[1]]
        lines.append(
            f"| `{key.split(' / ')[0]}`, Beta({a:g}, {b:g}) | ({row['fit_alpha']['mean']:.2f}, "
            f"{row['fit_beta']['mean']:.2f}) | {format_spread(row['bnpo_over_grpo'])} | {format_effect(below)}: "
            f"{cell['verdicts']['below_grpo']} | {format_spread(row['bnpo_over_heldout_minimum'])} | "
            f"{format_effect(at_min)}: {cell['verdicts']['at_minimum']} |"
        )
    lines += ["", "| model, population | machinery | RV grpo / REINFORCE (\\|x - 1\\| >= 0.05) | held-out selection "
              f"cost (<= {prereg.TIE_FACTOR['simulation']}) |", "|---|---|---|---|"]  # fmt: skip
    for key, cell in judged["cells"].items():
        c = cell["controls"]
        lines.append(
            f"| {key} | {c['machinery']} | {c['grpo_over_reinforce']:.3f} ({c['tells_grpo_from_reinforce']}) | "
            f"{c['selection_cost']:.3f} ({c['selection_resolves_the_band']}) |"
        )
    lines += ["", "| model | `below_grpo` | `at_minimum` |", "|---|---|---|"]
    for model, verdicts in judged["summary"].items():
        lines.append(f"| `{model}` | {verdicts['below_grpo']} | {verdicts['at_minimum']} |")
    return "\n".join(lines)


def format_spread(spread: dict) -> str:
    """``mean (min-max)`` of a :func:`harness.spread`, as the results page quotes it."""
    return f"{spread['mean']:.3f} ({spread['min']:.3f}-{spread['max']:.3f})"


def format_effect(effect: dict | None, after_count: str = "") -> str:
    """``mean [low, high], in_favour/n`` of a paired effect (``after_count`` follows the count), or "not measurable"."""
    if effect is None:
        return "not measurable"
    low, high = effect["low"], effect["high"]
    return f"{effect['mean']:+.3f} [{low:+.3f}, {high:+.3f}], {effect['in_favour']}/{effect['n']}{after_count}"


def plot(report: dict, path: Path) -> None:
    import numpy as np

    seed = report["runs"][0]["seed"]
    names = sorted({run["population"] for run in report["runs"]}, key=list(POPULATIONS).index)
    logs = np.log2(GRID)
    size = (3.2 * len(names), 3.2 * len(MODELS))
    with harness.figure(path, len(MODELS), len(names), figsize=size, squeeze=False) as (fig, axes):
        for r, model in enumerate(MODELS):
            for c, name in enumerate(names):
                ax = axes[r][c]
                cell = next(
                    x for x in report["runs"] if (x["seed"], x["model"], x["population"]) == (seed, model, name)
                )
                grid = np.array(cell["grid_rv"])
                ratio = np.log2(np.clip(grid / grid.min(), 1.0, 4.0))
                extent = [logs[0], logs[-1], logs[0], logs[-1]]
                ax.imshow(ratio.T, origin="lower", extent=extent, cmap="viridis", vmax=2)
                best, fit = cell["grid_min"], cell["fit_mean"]
                ax.plot(np.log2(best["alpha"]), np.log2(best["beta"]), "w*", ms=12, label="min")
                ax.plot(np.log2(fit["alpha"]), np.log2(fit["beta"]), "ro", label="bnpo fit")
                ax.plot(np.log2(1.5), np.log2(1.5), "ks", mfc="none", label="~grpo (1.5, 1.5)")
                a, b = POPULATIONS[name]
                ax.set_title(f"{model}: Beta({a:g}, {b:g})", fontsize=9)
                ax.set_xlabel("log2 alpha")
                if c == 0:
                    ax.set_ylabel("log2 beta")
                if r == 0 and c == 0:
                    ax.legend(fontsize=6, loc="upper right")
        fig.suptitle(f"log2 RV / min RV over the (alpha, beta) grid (seed {seed}; clipped at 2 = 4x)", fontsize=10)


def run(options) -> dict:
    from trl_ext.training import set_threads

    set_threads(1)
    start = time.time()
    controls = {name: paper_control(*POPULATIONS[name], 0) for name in options.populations}
    for name, control in controls.items():
        print(f"control {name}: {control}")
    runs: list[dict] = []
    for seed in options.seeds:
        for model in MODELS:
            for name in options.populations:
                cell = simulate(model, *POPULATIONS[name], 1000 * seed + 17, options.batches)
                runs.append({"seed": seed, "model": model, "population": name, **cell})
                print(
                    f"seed {seed} {model:>14} {name:>11}: RV grpo {cell['rv']['grpo']:.4g} bnpo {cell['rv']['bnpo']:.4g}"
                    f" reinforce {cell['rv']['reinforce']:.4g} grid min {cell['grid_min']['rv']:.4g} at "
                    f"({cell['grid_min']['alpha']:.3g}, {cell['grid_min']['beta']:.3g}); fit "
                    f"({cell['fit_mean']['alpha']:.3g}, {cell['fit_mean']['beta']:.3g}); bnpo/grpo "
                    f"{cell['bnpo_over_grpo']:.3f} bnpo/held-out min {bnpo_over_heldout_minimum(cell):.3f} "
                    f"[{time.time() - start:.0f} s]"
                )
    settings = dict(seeds=options.seeds, batches=options.batches, prompts=PROMPTS, num_generations=NUM_GENERATIONS)
    settings.update(grid=GRID, nuisance_dim=NUISANCE_DIM, populations={n: POPULATIONS[n] for n in options.populations})
    return dict(
        preregistration=prereg.__doc__, amendments=list(prereg.AMENDMENTS), options=settings, controls=controls,
        runs=runs, wall_seconds=time.time() - start,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_args(parser, RESULTS / "bnpo_beta_simulation.json", seeds=prereg.SIMULATION_SEEDS)
    parser.add_argument("--batches", type=int, default=prereg.SIMULATION_BATCHES)
    parser.add_argument("--populations", nargs="+", default=list(prereg.SKEWED_POPULATIONS), choices=list(POPULATIONS))
    options = parser.parse_args(argv)
    report = harness.load_report(options.out) if options.replot else run(options)
    report["summary"] = summarise(report["runs"])
    report["verdict"] = judge(report)

    def show(report: dict) -> None:
        print(docs_tables(report))

    return harness.finish(options, report, argv, plot=plot, show=show)


if __name__ == "__main__":
    main()
