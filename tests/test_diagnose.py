"""``trl-ext diagnose`` and ``RegimeCallback``: the measures, the inside/outside proof for every regime, the callback
on every trainer, and the command's one-line errors.

Each regime test runs the real command (or, for the scripted multi-turn case, the real trainer with the callback) on
a setting inside the regime and one outside it, and asserts that only the first is flagged:

* DIVA (zero-signal groups): the hardest ``arithmetic`` level (``carry``) against the easiest (``copy``), on a tiny
  model warm-started on copy problems (tests/diagnose_helpers.py states its measured competence);
* BNPO (skewed success rates): two synthetic tasks whose per-prompt success rates are drawn from Beta(0.5, 5)
  (skewed) and Beta(2, 2) (symmetric); each completion passes with its prompt's rate, whatever the model writes;
* MinPRO (off-policy drift) and HAPO (clipping of high-entropy tokens): ``count_chain`` with 8 micro-batches per
  generation (7 of 8 stale) against on-policy;
* CalibAdv (useful steps in failed trajectories): ``deepsearch`` with scripted trajectories that search the supporting
  documents against ones whose searches retrieve none.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from calibadv_helpers import (  # noqa: F401  (fixture)
    ScriptedTurns,
    deepsearch_checkpoint_fixture,
)
from diagnose_helpers import copy_warm_start, measured, run_diagnosis, status
from harness import config_kwargs

from trl_ext.data.tasks import ARITHMETIC_ALPHABET, Task, register_task
from trl_ext.diagnose.measures import TokenAccumulator, group_measures, useful_step_share
from trl_ext.diagnose.regimes import REGIMES, assess

# ---------------------------------------------------------------------------------------------------------------------
# The measures (no training)
# ---------------------------------------------------------------------------------------------------------------------


def test_zero_signal_split_and_histogram():
    rewards = torch.tensor(
        [0, 0, 0, 0] + [1, 1, 1, 1] + [0, 1, 0, 0] + [1, 1, 0, 1] + [float("nan")] * 4, dtype=torch.float32
    )
    values, reasons = group_measures(rewards, 4)
    assert values["regime/zero_signal_frac"] == 0.5  # 2 of the 4 scorable groups
    assert values["regime/zero_signal_all_fail"] == 0.25 and values["regime/zero_signal_all_pass"] == 0.25
    assert values["regime/mixed_frac"] == 0.5
    hist = {key.rsplit("/", 1)[1]: value for key, value in values.items() if "/success_hist/" in key}
    assert hist == {"p0": 0.25, "p0_25": 0.0, "p25_50": 0.25, "p50_75": 0.0, "p75_100": 0.25, "p100": 0.25}
    assert all(math.isfinite(v) for v in values.values())


def test_beta_measures_tell_skewed_from_symmetric_rates():
    rng = random.Random(0)

    def batch(a: float, b: float) -> torch.Tensor:
        rates = [rng.betavariate(a, b) for _ in range(64)]
        return torch.tensor([float(rng.random() < p) for p in rates for _ in range(16)])

    skewed, _ = group_measures(batch(0.5, 5.0), 16)
    symmetric, _ = group_measures(batch(2.0, 2.0), 16)
    assert skewed["regime/bnpo_beta"] > skewed["regime/bnpo_alpha"]  # mass at low success rates
    assert skewed["regime/bnpo_beta_ratio"] > 1.3 > symmetric["regime/bnpo_beta_ratio"]
    for values in (skewed, symmetric):
        assert 0 < values["regime/bnpo_weight_min"] <= values["regime/bnpo_weight_max"]
        assert values["regime/bnpo_vs_grpo_spread"] >= 1.0


def test_degenerate_batches_give_reasons_never_nan():
    values, reasons = group_measures(torch.full((8,), float("nan")), 4)
    assert not values and "no scorable completion" in reasons["regime/zero_signal_frac"]
    values, reasons = group_measures(torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]), 4)
    assert values["regime/zero_signal_frac"] == 1.0
    assert "0 of 2 groups have signal" in reasons["regime/bnpo_beta_ratio"]
    values, reasons = group_measures(torch.tensor([0.0, 1.0, 1.0]), 1)
    assert values["regime/zero_signal_frac"] == 1.0 and "num_generations is 1" in reasons["regime/bnpo_alpha"]
    with pytest.raises(ValueError, match="reward_range"):
        group_measures(torch.zeros(4), 2, reward_range=(1.0, 1.0))


def test_token_measures_on_policy_and_stale():
    torch.manual_seed(0)
    logps = -torch.rand(4, 12)
    mask = torch.ones(4, 12)
    mask[0, 8:] = 0
    entropies = torch.rand(4, 12)
    clipped = torch.zeros(4, 12, dtype=torch.bool)
    clipped[:, 0] = True

    acc = TokenAccumulator()
    acc.add(logps=logps, old_logps=None, mask=mask, entropies=entropies, clipped=clipped)
    values, reasons = acc.result()
    assert values["regime/logratio_abs_mean"] == 0.0 and values["regime/stale_batch_frac"] == 0.0
    assert values["regime/minpro_weight_min"] == values["regime/minpro_weight_max"] == 1.0
    assert "on-policy" in reasons["regime/prefix_to_token_spread"]
    assert "no sampler log-probs" in reasons["regime/sampler_logratio_abs_mean"]
    assert values["regime/entropy_p10"] <= values["regime/entropy_p50"] <= values["regime/entropy_p90"]

    old = logps + 0.3 * torch.randn(4, 12)
    acc.add(logps=logps, old_logps=old, mask=mask, entropies=entropies, sampling_logps=old - 0.1, clipped=clipped)
    values, reasons = acc.result()
    expected = ((logps - old).abs() * mask).sum() / mask.sum()
    assert values["regime/logratio_abs_mean"] == pytest.approx(float(expected), rel=1e-5)
    assert values["regime/stale_batch_frac"] == 1.0
    assert values["regime/sampler_logratio_abs_mean"] == pytest.approx(0.1, rel=1e-4)
    assert "agree" in reasons["regime/sampler_prefix_to_token_spread"]  # a constant offset: no spread to compare
    # Independent token log-ratios: the cumulative prefix spreads more than a single token.
    assert values["regime/prefix_to_token_spread"] > 1.0
    assert values["regime/minpro_weight_min"] < 1.0 < values["regime/minpro_weight_max"]
    assert {f"regime/logratio_abs_q{q}" for q in range(1, 5)} <= set(values)
    # A sampler that disagrees token by token (vLLM's numerics): its prefix drifts more than one token.
    acc.add(logps=logps, old_logps=None, mask=mask, sampling_logps=logps + 0.2 * torch.randn(4, 12))
    values, reasons = acc.result()
    assert values["regime/sampler_prefix_to_token_spread"] > 1.0


def test_useful_step_share():
    steps = [
        [{"docs": ["d1", "x"]}, {"docs": ["d1"]}],  # useful first step
        [{"docs": ["x"]}, {"docs": ["y"]}],  # never a supporting doc
        [{"docs": ["d2"]}],  # positive trajectory: not counted
    ]
    support = [["d1", "d2"], ["d1", "d2"], ["d2"]]
    values, reasons = useful_step_share(steps, support, [True, True, False])
    assert values["regime/neg_traj_useful_step_frac"] == 0.5 and not reasons
    assert values["regime/neg_traj_frac"] == pytest.approx(2 / 3)
    # A repeat of an already retrieved supporting document is not useful.
    values, _ = useful_step_share([[{"docs": ["d1"]}, {"docs": ["d1"]}]], [["d1"]], [True])
    assert values["regime/neg_traj_useful_step_frac"] == 1.0
    values, reasons = useful_step_share([[{"docs": ["x"]}], [{"docs": ["d1"]}]], [["d1"], ["d1"]], [False, False])
    assert "no trajectory has a negative advantage" in reasons["regime/neg_traj_useful_step_frac"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"reward_range": (1.0, 0.0)}, "reward_range"),
        ({"success_threshold": float("nan")}, "success_threshold"),
        ({"entropy_pivot": 1.0}, "entropy_pivot"),
        ({"max_entropy_tokens": 0}, "max_entropy_tokens"),
    ],
)
def test_callback_refuses_bad_settings_naming_the_field(kwargs, field):
    from trl_ext import RegimeCallback

    with pytest.raises(ValueError, match=field):
        RegimeCallback(**kwargs)


def test_assess_reports_missing_quantities_with_their_reason():
    rows = assess({"measured": {}, "not_measurable": {"regime/zero_signal_frac": "because"}})
    diva = next(row for row in rows if row["method"] == "diva")
    assert diva["status"] == "not measurable" and diva["why"] == "because" and diva["value"] is None
    assert {row["method"] for row in rows if row["method"]} == {regime.method for regime in REGIMES}
    for row in rows:
        if row["method"]:
            assert row["source"].startswith("docs/results.md#") and row["docs"].startswith("docs/trainers/")


# ---------------------------------------------------------------------------------------------------------------------
# Inside / outside each regime, end to end
# ---------------------------------------------------------------------------------------------------------------------

_RATES = random.Random(0)


def _rate_task(name: str, a: float, b: float) -> Task:
    def make_dataset(num_rows: int = 256, seed: int = 0):
        from datasets import Dataset

        rng = random.Random(seed)
        prompts = [f"{i // 10 % 10}{i % 10}+{i // 100}=" for i in range(num_rows)]
        return Dataset.from_dict({"prompt": prompts, "success_rate": [rng.betavariate(a, b) for _ in prompts]})

    def rate_reward(completions, success_rate, **kwargs):
        return [float(_RATES.random() < p) for p in success_rate]

    return register_task(
        Task(
            name=name,
            description=f"synthetic: each prompt passes with its own rate, drawn from Beta({a}, {b})",
            make_dataset=make_dataset,
            reward_funcs=[rate_reward],
            max_completion_length=2,
            alphabet=ARITHMETIC_ALPHABET,
        ),
        overwrite=True,
    )


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    return copy_warm_start(tmp_path_factory.mktemp("copy-warm"), 4)


@pytest.fixture(scope="module")
def on_policy(tmp_path_factory, warm):
    """``copy`` on the warm start, on-policy: easy (DIVA outside) and neither stale nor clipped."""
    return run_diagnosis(tmp_path_factory.mktemp("copy"), "copy", 3, task="copy", model_name_or_path=warm)


def test_zero_signal_regime_hard_against_easy_level(tmp_path, warm, on_policy):
    hard = run_diagnosis(tmp_path, "carry", 3, task="carry", model_name_or_path=warm)
    assert status(hard, "diva") == "inside" and status(on_policy, "diva") == "outside"
    inside, outside = measured(hard), measured(on_policy)
    assert inside["regime/zero_signal_all_fail"] > inside["regime/zero_signal_all_pass"]
    assert inside["regime/zero_signal_frac"] >= 0.5 > outside["regime/zero_signal_frac"]
    assert outside["regime/mixed_frac"] > inside["regime/mixed_frac"]


def test_beta_regime_skewed_against_symmetric_success_rates(tmp_path):
    _rate_task("diagnose_skewed_rates", 0.5, 5.0)
    _rate_task("diagnose_symmetric_rates", 2.0, 2.0)
    common = dict(tiny_model=True, per_device_train_batch_size=256, max_completion_length=2)
    skewed = run_diagnosis(tmp_path, "skewed", 2, task="diagnose_skewed_rates", **common)
    symmetric = run_diagnosis(tmp_path, "symmetric", 2, task="diagnose_symmetric_rates", **common)
    assert status(skewed, "bnpo") == "inside" and status(symmetric, "bnpo") == "outside"
    inside, outside = measured(skewed), measured(symmetric)
    assert inside["regime/bnpo_beta"] > inside["regime/bnpo_alpha"]
    assert inside["regime/bnpo_beta_ratio"] >= 1.3 > outside["regime/bnpo_beta_ratio"]
    assert outside["regime/mixed_frac"] >= 0.25  # outside because symmetric, not for lack of signal


def test_drift_and_clip_regimes_stale_against_on_policy(tmp_path, on_policy):
    stale = run_diagnosis(
        tmp_path,
        "stale",
        8,
        task="count_chain",
        tiny_model=True,
        per_device_train_batch_size=32,
        steps_per_generation=8,
        max_completion_length=12,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        loss_type="dapo",
    )
    for method in ("minpro", "hapo"):
        assert status(stale, method) == "inside", method
        assert status(on_policy, method) == "outside", method
    inside, outside = measured(stale), measured(on_policy)
    assert 0.8 < inside["regime/stale_batch_frac"] < 0.9  # 7 of every 8 micro-batches
    assert outside["regime/stale_batch_frac"] == 0.0 and outside["regime/logratio_abs_mean"] == 0.0
    assert inside["regime/prefix_to_token_spread"] > 1.0  # the prefix drifts more than one token
    assert inside["regime/minpro_weight_min"] < 1.0 < inside["regime/minpro_weight_max"]
    assert inside["regime/clip_frac_high_entropy"] > 0 and outside["regime/clip_frac_high_entropy"] == 0
    assert "on-policy" in on_policy["summary"]["not_measurable"]["regime/prefix_to_token_spread"]
    assert inside["regime/entropy_p10"] <= inside["regime/entropy_p50"] <= inside["regime/entropy_p90"]
    assert "regime/entropy_slope" in inside


def _scripted_calibadv(checkpoint, tmp_path, useful: bool):
    from transformers import AutoTokenizer

    from trl_ext import CalibAdvConfig, CalibAdvTrainer, RegimeCallback
    from trl_ext.data import get_task
    from trl_ext.data.deepsearch import build_deepsearch_world
    from trl_ext.rewards.qa import qa_f1_format_reward

    dataset = get_task("deepsearch").make_dataset(8, 0)
    titles = {doc.id: doc.title for doc in build_deepsearch_world(0).documents}
    scripts = {}
    for row in dataset:
        first = titles[row["supporting_doc_ids"][0]] if useful else "zzz qqq"
        gold = row["golden_answers"][0]
        scripts[row["prompt"]] = [
            [f"<think>a</think>\n<search> {first} </search>"],
            [f"<think>b</think>\n<answer> {gold} </answer>", "<think>b</think>\n<answer> wrong guess </answer>"],
        ]
    args = CalibAdvConfig(
        **config_kwargs(
            tmp_path / ("useful" if useful else "useless"),
            per_device_train_batch_size=8,
            max_completion_length=600,
            learning_rate=1e-6,  # TRL's default
        ),
        calibadv_corpus_path="deepsearch",
        calibadv_max_turns=2,
        calibadv_max_tokens_per_turn=96,
        calibadv_max_obs_tokens=300,
        calibadv_topk=2,
        calibadv_soft_penalty=False,  # plain GRPO advantages, as `trl-ext diagnose` runs a calibadv recipe
        calibadv_answer_rebalance=False,
    )
    regime = RegimeCallback()
    trainer = CalibAdvTrainer(
        model=checkpoint,
        reward_funcs=[qa_f1_format_reward],
        args=args,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(checkpoint),
        callbacks=[regime],
    )
    trainer.rollout_func.logits_processors.append(ScriptedTurns(trainer.processing_class, scripts))
    trainer.train()
    summary = regime.summary()
    assert json.loads((tmp_path / ("useful" if useful else "useless") / "regime.json").read_text()) == json.loads(
        json.dumps(summary)
    )
    return summary


def test_multi_turn_regime_useful_against_useless_searches(deepsearch_checkpoint, tmp_path):
    useful = _scripted_calibadv(deepsearch_checkpoint, tmp_path, useful=True)
    useless = _scripted_calibadv(deepsearch_checkpoint, tmp_path, useful=False)
    rows_in, rows_out = assess(useful), assess(useless)
    assert next(r for r in rows_in if r["method"] == "calibadv")["status"] == "inside"
    assert next(r for r in rows_out if r["method"] == "calibadv")["status"] == "outside"
    assert useful["measured"]["regime/neg_traj_useful_step_frac"]["mean"] == 1.0  # every failure searched well
    assert useless["measured"]["regime/neg_traj_useful_step_frac"]["max"] == 0.0
    assert useful["measured"]["regime/neg_traj_frac"]["mean"] > 0
    # The search rollout returns its own sampling log-probs: the sampler/trainer comparison is measured.
    assert math.isfinite(useful["measured"]["regime/sampler_logratio_abs_mean"]["mean"])


# ---------------------------------------------------------------------------------------------------------------------
# The callback on every trainer
# ---------------------------------------------------------------------------------------------------------------------

_TOKEN_KEYS = ("regime/logratio_abs_mean", "regime/entropy_p50", "regime/minpro_weight_min")


@pytest.mark.parametrize("name", ["trl", "grpo", "bnpo", "diva", "hapo", "minpro", "calibadv"])
def test_callback_runs_with_every_trainer(name, tiny_checkpoint, toy_dataset, deepsearch_checkpoint, tmp_path):
    from conftest import length_reward
    from trl import GRPOConfig, GRPOTrainer

    from trl_ext import RegimeCallback
    from trl_ext.registry import get_trainer

    common = config_kwargs(
        tmp_path, per_device_train_batch_size=8, max_completion_length=4, max_steps=3, learning_rate=1e-6
    )  # learning_rate: TRL's default
    regime = RegimeCallback()
    model, dataset, rewards = tiny_checkpoint, toy_dataset, [length_reward]
    if name == "trl":
        trainer = GRPOTrainer(model=model, reward_funcs=rewards, args=GRPOConfig(**common), train_dataset=dataset)
        trainer.add_callback(regime)  # after construction: found at on_train_begin from the calling frame
    else:
        trainer_cls, config_cls = get_trainer(name)
        if name == "calibadv":
            from trl_ext.data import get_task
            from trl_ext.rewards.qa import qa_f1_format_reward

            model, dataset, rewards = (
                deepsearch_checkpoint,
                get_task("deepsearch").make_dataset(8, 0),
                [qa_f1_format_reward],
            )
            common.update(
                max_completion_length=200,
                calibadv_corpus_path="deepsearch",
                calibadv_max_turns=1,
                calibadv_max_tokens_per_turn=48,
                calibadv_max_obs_tokens=100,
            )
        trainer = trainer_cls(
            model=model, reward_funcs=rewards, args=config_cls(**common), train_dataset=dataset, callbacks=[regime]
        )
    trainer.train()

    assert regime.trainer is trainer
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 3
    for entry in logged:  # through TRL's own logging path: log_history, the console, the trackers
        assert 0.0 <= entry["regime/zero_signal_frac"] <= 1.0
        assert all(math.isfinite(v) for k, v in entry.items() if k.startswith("regime/"))
    summary = json.loads((tmp_path / "regime.json").read_text())
    if name == "trl":
        assert not regime.observed
        for key in _TOKEN_KEYS:
            assert "computes per-token ratios" in summary["not_measurable"][key]
        assert "regime/entropy_slope" in summary["measured"]  # from TRL's own logged entropy
    else:
        assert regime.observed
        for key in _TOKEN_KEYS:
            assert key in logged[-1], key


# ---------------------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------------------


def _error_line(capsys, argv: list[str]) -> str:
    from trl_ext.cli import main

    try:  # argument errors exit from the parser, input errors return the status: both are 2 and one line
        code = main(["diagnose", *argv])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("trl-ext diagnose: error: "), err
    return err[0]


def test_bad_input_is_one_line_naming_the_option(capsys, tmp_path):
    assert "--config: no such file" in _error_line(capsys, ["--config", str(tmp_path / "none.yaml")])
    assert "exactly one of --config" in _error_line(capsys, [])
    assert "--steps must be at least 1" in _error_line(capsys, ["--config", "x.yaml", "--steps", "0"])
    assert "no regime.json and no trainer_state.json" in _error_line(capsys, ["--from", str(tmp_path)])
    assert "--from: no such directory" in _error_line(capsys, ["--from", str(tmp_path / "gone")])
    (tmp_path / "regime.json").write_text("{not json")
    assert "is not valid JSON" in _error_line(capsys, ["--from", str(tmp_path)])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    assert "must hold a mapping of fields" in _error_line(capsys, ["--config", str(bad)])
    bad.write_text("trainer: grpo\ntask: arithmetic\ntiny_model: true\nnot_a_field: 1\n")
    assert "not_a_field" in _error_line(capsys, ["--config", str(bad), "--output_dir", str(tmp_path / "o")])


def test_from_reprints_the_table_of_a_finished_run(on_policy, tmp_path, capsys):
    from trl_ext.cli import main

    run_dir = on_policy["output_dir"]
    for name in ("regime.json", "diagnosis.json", "diagnosis.png"):
        assert (Path(run_dir) / name).is_file(), name
    assert main(["diagnose", "--from", run_dir, "--output_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "method" in out and "not a prediction of any method's gain" in out
    again = json.loads((tmp_path / "diagnosis.json").read_text())
    assert again["rows"] == json.loads(json.dumps(on_policy["rows"]))  # the same table from the stored summary
    for row in on_policy["rows"]:
        if row["value"] is not None:
            assert row["value"] in out
        else:
            assert row["why"] in out


def test_train_with_diagnose_then_from_reads_the_run(tmp_path, capsys):
    from trl_ext.cli import main

    out = tmp_path / "run"
    argv = ["train", "--config", "recipes/grpo/quickstart.yaml", "--diagnose", "true", "--max_steps", "3"]
    argv += ["--per_device_train_batch_size", "32", "--task_num_rows", "256", "--logging_steps", "1"]
    argv += ["--output_dir", str(out), "--save_strategy", "steps", "--save_steps", "3"]
    assert main(argv) == 0
    progress = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert len(progress) == 3 and all("regime/zero_signal_frac" in line for line in progress)  # the console line
    summary = json.loads((out / "regime.json").read_text())
    assert summary["steps"] == 3 and "regime/logratio_abs_mean" in summary["measured"]

    assert main(["diagnose", "--from", str(out), "--output_dir", str(tmp_path / "a")]) == 0
    from_file = json.loads((tmp_path / "a" / "diagnosis.json").read_text())
    # Without regime.json: the checkpoint's log history, the same metrics as logged (so the same run means).
    (out / "regime.json").unlink()
    assert main(["diagnose", "--from", str(out), "--output_dir", str(tmp_path / "b")]) == 0
    from_history = json.loads((tmp_path / "b" / "diagnosis.json").read_text())
    assert "checkpoint-3/trainer_state.json" in from_history["header"]
    for a, b in zip(from_file["rows"], from_history["rows"], strict=True):
        if a["method"]:
            assert (a["status"], a["value"]) == (b["status"], b["value"]), a["method"]


_ROOT = Path(__file__).resolve().parents[1]
#: Every recipe that runs offline: a tiny model built on the spot and a built-in task.
_OFFLINE_RECIPES = sorted(
    str(path.relative_to(_ROOT))
    for path in (_ROOT / "recipes").glob("*/*.yaml")
    if "tiny_model: true" in path.read_text() and "\ntask:" in path.read_text()
)


def test_the_offline_recipes_are_found():
    assert len(_OFFLINE_RECIPES) == 6 and "recipes/calibadv/deepsearch_tiny.yaml" in _OFFLINE_RECIPES


@pytest.mark.slow
@pytest.mark.parametrize("recipe", _OFFLINE_RECIPES)
def test_diagnose_prints_the_table_for_every_offline_recipe(recipe, tmp_path, capsys, monkeypatch):
    from trl_ext.cli import main

    monkeypatch.chdir(_ROOT)
    assert main(["diagnose", "--config", recipe, "--steps", "2", "--output_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for regime in REGIMES:
        assert f"\n{regime.method} " in out, regime.method
    payload = json.loads((tmp_path / "diagnosis.json").read_text())
    assert {row["status"] for row in payload["rows"] if row["method"]} <= {"inside", "outside", "not measurable"}
    assert (tmp_path / "regime.json").is_file()


@pytest.mark.slow
def test_the_choosing_page_shows_the_quickstart_table_as_printed(tmp_path, capsys, monkeypatch):
    """docs/choosing.md's worked example is the command's real output (elapsed times aside)."""
    from trl_ext.cli import main

    monkeypatch.chdir(_ROOT)
    argv = ["diagnose", "--config", "recipes/grpo/quickstart.yaml", "--steps", "20", "--output_dir"]
    assert main([*argv, "outputs/diagnose-quickstart"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("step ")]
    page = (_ROOT / "docs" / "choosing.md").read_text()
    block = page.split("```text\n", 1)[1].split("\n```", 1)[0].splitlines()
    assert [line for line in block if not line.startswith(("step ", "..."))] == printed


@pytest.mark.slow  # two real processes: about 30 s
def test_two_processes_pool_the_token_measures(tiny_checkpoint, tmp_path):
    from twoproc import launch_two_processes

    script = Path(__file__).parent / "scripts" / "diagnose_two_process.py"
    launch_two_processes(str(script), "--checkpoint", tiny_checkpoint, "--out", str(tmp_path), timeout=240)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["num_processes"] for r in ranks] == [2, 2] and [r["process_index"] for r in ranks] == [0, 1]
    assert ranks[0]["summary"]["measured"] == ranks[1]["summary"]["measured"]  # the same on every process
    assert ranks[0]["logged"] == ranks[1]["logged"] and len(ranks[0]["logged"]) == 2
    for step in range(2):
        local = [r["local"][step] for r in ranks]
        pooled = ranks[0]["pooled"][step]
        assert pooled[0] == local[0][0] + local[1][0]  # tokens of both processes
        assert pooled[1] == min(loc[1] for loc in local) and pooled[2] == max(loc[2] for loc in local)
    second = ranks[0]["summary"]["series"]["regime/logratio_abs_mean"][1][1]
    assert second > 0  # the second iteration is off-policy
    assert ranks[0]["local"][1][1:] != ranks[1]["local"][1][1:]  # the processes saw different tokens: pooling mattered
