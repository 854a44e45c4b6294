"""A practitioner's first day (issue 15, first part): nonsense values refused before training, trainers built without
``args`` that still run their method, a too-small dataset refused, CPU defaults, and the console script's edges."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import length_reward

from trl_ext import get_trainer, list_trainers

CONSOLE = shutil.which("trl-ext", path=str(Path(sys.executable).parent)) or shutil.which("trl-ext")


@pytest.mark.parametrize("name", ["grpo", "bnpo", "minpro", "hapo", "diva", "calibadv"])
@pytest.mark.parametrize(
    ("field", "value"),
    [("epsilon", -0.1), ("epsilon_high", -0.2), ("beta", -0.01), ("num_iterations", 0), ("max_completion_length", 0)],
)
def test_nonsense_values_are_refused_naming_the_field(tmp_path, name, field, value):
    _, config_cls = get_trainer(name)
    with pytest.raises(ValueError, match=rf"^{field} must be >= "):
        config_cls(output_dir=str(tmp_path), use_cpu=True, **{field: value})


def test_zero_is_accepted_where_it_means_off(tmp_path):
    _, config_cls = get_trainer("grpo")
    config = config_cls(output_dir=str(tmp_path), use_cpu=True, beta=0.0, epsilon=0.0)
    assert config.beta == 0.0 and config.epsilon == 0.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the default on a machine without a GPU")
def test_bf16_is_left_off_without_a_gpu(tmp_path):
    # TRL turns bf16 on by default, and transformers then refuses a CPU-only machine unless use_cpu is set.
    from trl import GRPOConfig

    with pytest.raises(ValueError, match="bf16"):
        GRPOConfig(output_dir=str(tmp_path))
    for name in list_trainers():
        extra = {"calibadv_corpus_path": "deepsearch"} if name == "calibadv" else {}
        assert get_trainer(name)[1](output_dir=str(tmp_path), **extra).bf16 is False
        # where TRL starts (use_cpu=True), its default stands: bf16 on (tests/test_parity.py trains both and compares)
        assert get_trainer(name)[1](output_dir=str(tmp_path), use_cpu=True, **extra).bf16 is True
    with pytest.raises(ValueError, match="bf16"):  # an explicit request is still honoured, and refused by transformers
        get_trainer("grpo")[1](output_dir=str(tmp_path), bf16=True)


@pytest.mark.parametrize(
    ("name", "estimator", "objective"),
    [
        ("bnpo", "BetaNormalizationAdvantage", "GRPOObjective"),
        ("minpro", "GRPOAdvantage", "MinPROObjective"),
        ("hapo", "TokenLevelGroupAdvantage", "HAPOObjective"),
    ],
)
def test_a_trainer_built_without_args_runs_its_own_method(
    tiny_checkpoint, toy_dataset, tmp_path, monkeypatch, name, estimator, objective
):
    # As with trl.GRPOTrainer, `args` may be left out; the trainer then uses its own config's defaults, not a plain
    # GRPOConfig (which silently turned the trainer into GRPO).
    trainer_cls, config_cls = get_trainer(name)
    monkeypatch.chdir(tmp_path)  # the default output directory is relative, as TRL's
    trainer = trainer_cls(model=tiny_checkpoint, reward_funcs=length_reward, train_dataset=toy_dataset)
    assert type(trainer.args) is config_cls
    assert Path(trainer.args.output_dir).name == f"{Path(tiny_checkpoint).name}-{trainer_cls._name}"
    assert type(trainer.advantage_estimator).__name__ == estimator
    assert type(trainer.policy_objective).__name__ == objective


def test_diva_without_args_gets_its_own_config_and_its_own_checks(tiny_checkpoint, toy_dataset, tmp_path, monkeypatch):
    # DIVAConfig's defaults (TRL's 8 x 8 batch) hold one prompt row per generation batch, too few for a problem and
    # its variant: DIVA's own check says so, instead of refusing a missing DIVAConfig.
    trainer_cls, _ = get_trainer("diva")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="must be a multiple of diva_num_variants"):
        trainer_cls(model=tiny_checkpoint, reward_funcs=length_reward, train_dataset=toy_dataset)


def test_calibadv_without_args_asks_for_its_retriever_not_for_a_config(
    tiny_checkpoint, toy_dataset, tmp_path, monkeypatch
):
    trainer_cls, _ = get_trainer("calibadv")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as error:
        trainer_cls(model=tiny_checkpoint, reward_funcs=length_reward, train_dataset=toy_dataset)
    assert "needs a CalibAdvConfig" not in str(error.value)
    assert "calibadv" in str(error.value) or "retriever" in str(error.value)


def test_minpro_checks_apply_only_when_its_objective_is_on(tmp_path):
    _, config_cls = get_trainer("minpro")
    config = config_cls(
        output_dir=str(tmp_path), use_cpu=True, policy_objective="grpo", importance_sampling_level="sequence"
    )
    assert config.importance_sampling_level == "sequence"
    config = config_cls(output_dir=str(tmp_path), use_cpu=True, policy_objective="grpo", loss_type="cispo")
    assert config.loss_type == "cispo"
    with pytest.raises(ValueError, match="importance_sampling_level: MinPRO requires token-level"):
        config_cls(output_dir=str(tmp_path), use_cpu=True, importance_sampling_level="sequence")


@pytest.mark.parametrize("name", ["grpo", "bnpo", "diva"])
def test_a_dataset_smaller_than_one_generation_batch_is_refused(tiny_checkpoint, toy_dataset, tmp_path, name):
    # Today TRL's sampler yields no batch: 0 steps, exit 0, "Model saved".
    trainer_cls, config_cls = get_trainer(name)
    args = config_cls(
        output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=16, num_generations=2, max_steps=1
    )  # 8 prompts per generation batch (4 problems for DIVA: each also fills a variant slot)
    needed = 4 if name == "diva" else 8
    small = toy_dataset.select(range(needed - 1))
    with pytest.raises(
        ValueError, match=rf"train_dataset: {needed - 1} row\(s\), but one generation batch draws {needed}"
    ):
        trainer_cls(model=tiny_checkpoint, reward_funcs=length_reward, args=args, train_dataset=small)
    trainer = trainer_cls(
        model=tiny_checkpoint, reward_funcs=length_reward, args=args, train_dataset=toy_dataset.select(range(needed))
    )
    assert len(trainer.train_dataset) == needed


def _console(*args: str, **env_overrides: str) -> subprocess.CompletedProcess:
    assert CONSOLE, "the trl-ext console script is not installed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", **env_overrides}
    return subprocess.run([CONSOLE, *args], capture_output=True, text=True, timeout=120, env=env)


def test_console_version_and_unknown_command():
    from importlib.metadata import version

    result = _console("--version")
    assert result.returncode == 0 and result.stdout.startswith(f"trl-ext {version('trl-ext')} (trl ")
    result = _console("trian")
    assert result.returncode == 2
    assert "unknown command 'trian'" in result.stderr and "train" in result.stderr


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_quickstart_refuses_a_step_count_below_one(steps, tmp_path):
    result = _console("quickstart", "--max_steps", steps, "--output_dir", str(tmp_path))
    assert result.returncode == 2
    assert f"--max_steps must be at least 1, got {steps}" in result.stderr
    assert not (tmp_path / "tiny-model").exists()  # refused before anything was built


def _bad_reward(value):
    def exploding_reward(completions, **kwargs):
        return [value if i == 3 else 0.5 for i in range(len(completions))]

    return exploding_reward


@pytest.mark.parametrize("name", ["grpo", "bnpo", "minpro", "hapo", "diva"])
@pytest.mark.parametrize("value", [float("inf"), -float("inf"), 1e9])
def test_infinite_or_absurd_rewards_fail_alike_naming_the_function(
    tiny_checkpoint, toy_dataset, tmp_path, name, value
):
    trainer_cls, config_cls = get_trainer(name)
    args = config_cls(
        output_dir=str(tmp_path),
        use_cpu=True,
        per_device_train_batch_size=8,
        num_generations=2,
        max_completion_length=4,
        max_steps=1,
        report_to="none",
        save_strategy="no",
        **({"bnpo_reward_max": 1e12, "bnpo_reward_min": -1e12} if name == "bnpo" else {}),
    )
    trainer = trainer_cls(model=tiny_checkpoint, reward_funcs=_bad_reward(value), args=args, train_dataset=toy_dataset)
    with pytest.raises(ValueError, match=r"reward function 'exploding_reward' returned .* for completion 3") as error:
        trainer.train()
    assert "must be finite with |r| <= 1e+06" in str(error.value)


def test_checkpoint_json_errors_name_the_file(tmp_path):
    from trl_ext.jsonio import read_json_object, write_json_atomic

    path = tmp_path / "diva_difficulty.json"
    write_json_atomic(str(path), {"levels": {"a": 3}})
    assert read_json_object(str(path), "x") == {"levels": {"a": 3}}
    assert [p.name for p in tmp_path.iterdir()] == ["diva_difficulty.json"]
    path.write_text('{"levels": ')
    with pytest.raises(ValueError, match=r"diva_difficulty.json: not valid JSON .* resume from an earlier checkpoint"):
        read_json_object(str(path), "DIVA's difficulty store")


def _calibadv_args(tmp_path, **overrides):
    _, config_cls = get_trainer("calibadv")
    return config_cls(
        output_dir=str(tmp_path), use_cpu=True, calibadv_corpus_path="deepsearch", num_generations=2, **overrides
    )


@pytest.mark.parametrize("key", ["num_beams", "num_return_sequences"])
def test_calibadv_refuses_beam_search_at_init(tiny_checkpoint, tmp_path, key):
    from datasets import Dataset

    trainer_cls, _ = get_trainer("calibadv")
    args = _calibadv_args(tmp_path, generation_kwargs={key: 2})
    with pytest.raises(ValueError, match=rf"generation_kwargs: {key}=2 is not supported by CalibAdv's search rollout"):
        trainer_cls(
            model=tiny_checkpoint,
            reward_funcs=length_reward,
            args=args,
            train_dataset=Dataset.from_dict({"question": ["q"] * 8}),
        )


def test_calibadv_refuses_a_vision_language_model_at_init(tiny_vlm_checkpoint, tmp_path):
    from datasets import Dataset

    trainer_cls, _ = get_trainer("calibadv")
    with pytest.raises(ValueError, match="belongs to a vision-language model"):
        trainer_cls(
            model=tiny_vlm_checkpoint,
            reward_funcs=length_reward,
            args=_calibadv_args(tmp_path),
            train_dataset=Dataset.from_dict({"question": ["q"] * 8}),
        )


def _http_calibadv(url, tmp_path, model, **overrides):
    from datasets import Dataset

    trainer_cls, _ = get_trainer("calibadv")
    _, config_cls = get_trainer("calibadv")
    args = config_cls(
        output_dir=str(tmp_path), use_cpu=True, num_generations=2, calibadv_retriever="http",
        calibadv_retriever_url=url, calibadv_retriever_max_retries=1, **overrides,
    )  # fmt: skip
    return trainer_cls(
        model=model, reward_funcs=length_reward, args=args, train_dataset=Dataset.from_dict({"question": ["q"] * 8})
    )


def test_calibadv_checks_a_remote_retriever_before_loading_the_model(tiny_checkpoint, tmp_path):
    from test_retrieval import MockServer, ok

    missing_model = str(tmp_path / "model-that-would-fail-to-load")
    # A server that is down: the health query fails before the model is even looked for.
    with MockServer(ok(lambda body: [])) as server:
        url = server.url
    with pytest.raises(RuntimeError, match=r"calibadv_retriever_url='http://127.0.0.1:\d+/retrieve': .*health query"):
        _http_calibadv(url, tmp_path, missing_model)
    # A server speaking another protocol ({"docs": ...} instead of {"result": [[...]]}).
    with MockServer(lambda body: (200, {"docs": ["T\nx"]}, 0.0)) as server:
        with pytest.raises(RuntimeError, match=r"malformed response.*calibadv_retriever_check=false"):
            _http_calibadv(server.url, tmp_path, missing_model)
    assert len(server.requests) == 1  # a wrong shape is not retried
    # A healthy server: one query, the same request training sends, and the trainer is built.
    with MockServer(ok(lambda body: [[{"document": {"contents": "T\nx"}}] for _ in body["queries"]])) as server:
        trainer = _http_calibadv(server.url, tmp_path, tiny_checkpoint)
        assert server.requests == [{"queries": ["health check"], "topk": 1, "return_scores": True}]
        assert trainer.retriever.url == server.url
        # Switched off: no request at start.
        _http_calibadv(server.url, tmp_path, tiny_checkpoint, calibadv_retriever_check=False)
        assert len(server.requests) == 1


def test_train_names_a_missing_local_model_directory(tmp_path):
    result = _console(
        "train", "--config", str(Path(__file__).parents[1] / "recipes" / "grpo" / "quickstart.yaml"),
        "--tiny_model", "false", "--model_name_or_path", str(tmp_path / "no-such-model"), "--output_dir", str(tmp_path),
    )  # fmt: skip
    assert result.returncode != 0
    assert f"model_name_or_path: no such directory {str(tmp_path / 'no-such-model')!r}" in result.stderr


def test_train_threads_default_to_the_quickstart_setting_with_a_tiny_model(monkeypatch):
    from trl_ext.training import set_threads

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    set_threads(None, tiny_model=True)
    set_threads(None, tiny_model=False)
    set_threads(3, tiny_model=False)
    set_threads(None, default=2)
    assert calls == [1, 3, 2]  # 1 for the tiny model, nothing for a real one (torch's default), 3 when asked
    with pytest.raises(ValueError, match="threads must be at least 1"):
        set_threads(0)
    with pytest.raises(ValueError, match="--threads must be at least 1"):
        set_threads(-1, option="--threads")


@pytest.mark.parametrize(
    ("steps", "expected"),
    [("5", "mean reward over steps 1-5: "), ("25", "over steps 21-25: ")],
)
def test_quickstart_summary_compares_windows_that_exist(tmp_path, steps, expected):
    result = _console("quickstart", "--max_steps", steps, "--output_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert expected in summary
    if steps == "5":
        assert "single logging window" in summary and "rising" not in summary


def test_model_card_names_the_local_base_model_and_the_method(tiny_checkpoint, toy_dataset, tmp_path):
    trainer_cls, config_cls = get_trainer("bnpo")
    out = tmp_path / "my-run"
    trainer = trainer_cls(
        model=tiny_checkpoint,
        reward_funcs=length_reward,
        args=config_cls(str(out), use_cpu=True),
        train_dataset=toy_dataset,
    )
    trainer.create_model_card()
    card = (out / "README.md").read_text()
    assert "[None]" not in card and "Model Card for None" not in card
    assert f"fine-tuned version of the local model `{tiny_checkpoint}`" in card
    assert "# Model Card for my-run" in card
    assert "trained with BNPO" in card and "arXiv:2506.02864" in card


@pytest.mark.parametrize("name", sorted(list_trainers()))
def test_quickstart_runs_every_registered_trainer(tmp_path, name):
    # diva and calibadv train on their own built-in tasks (trl_ext.data.quickstart.QUICKSTART_TRAINER_OVERRIDES).
    result = _console("quickstart", "--trainer", name, "--max_steps", "2", "--output_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"trl-ext quickstart: trainer={name}" in result.stdout
    assert "mean reward over steps 1-2:" in result.stdout.strip().splitlines()[-1]
    # The progress line shows the method's own key metrics, each with a finite value.
    from trl_ext.catalogue import KEY_METRICS

    (line,) = [line for line in result.stdout.splitlines() if line.startswith("step    2/2 | reward")]
    for key in KEY_METRICS.get(name, ()):
        value = line.split(f"| {key} " if key == KEY_METRICS[name][0] else f" {key} ", 1)[1].split()[0]
        assert math.isfinite(float(value)), (key, line)
    if name not in KEY_METRICS:
        assert line.count("|") == 3, line  # grpo: step | reward | loss | time, nothing else
    # With disable_tqdm (the quickstart sets it), no model-loading or shard-writing bars.
    assert "Loading weights" not in result.stderr and "Writing model shards" not in result.stderr


@pytest.mark.parametrize("conversational", [False, True])
def test_prompts_longer_than_the_model_positions_are_refused(tmp_path, conversational):
    from datasets import Dataset

    from trl_ext.tiny_models import build_tiny_checkpoint

    checkpoint = build_tiny_checkpoint(str(tmp_path / "short"), max_position_embeddings=64)
    trainer_cls, config_cls = get_trainer("grpo")
    args = config_cls(output_dir=str(tmp_path / "out"), use_cpu=True, max_completion_length=16, num_generations=2)
    long_prompt = "1+2=" * 17  # 68 characters: 68 tokens with the character tokenizer, > 64 positions
    prompts = ["1+1="] * 7 + [long_prompt]
    if conversational:
        prompts = [[{"role": "user", "content": p}] for p in prompts]
    with pytest.raises(
        ValueError, match=r"train_dataset: the prompt of row 7 has \d+ tokens, more than the model's 64 positions"
    ):
        trainer_cls(
            model=checkpoint,
            reward_funcs=length_reward,
            args=args,
            train_dataset=Dataset.from_dict({"prompt": prompts}),
        )
    fits = Dataset.from_dict({"prompt": prompts[:7]})
    assert (
        trainer_cls(model=checkpoint, reward_funcs=length_reward, args=args, train_dataset=fits).train_dataset is fits
    )


def test_list_prints_trainers_estimators_and_objectives_without_importing_them():
    code = (
        "import sys; from trl_ext.cli import list_main; list_main([]); "
        "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'trl_ext.trainers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout  # the table comes from trl_ext.catalogue: nothing heavy is imported
    for header in ("name  ", "advantage_estimator  ", "policy_objective  "):
        assert header in result.stdout
    for name in ("beta_normalization", "hapo_tlga", "minpro", "calibadv"):
        assert f"\n{name} " in result.stdout


def test_the_catalogue_describes_every_registered_component():
    from trl_ext.catalogue import BUILTIN_ESTIMATORS, BUILTIN_OBJECTIVES, BUILTIN_TRAINERS
    from trl_ext.registry import (
        get_advantage_estimator,
        get_policy_objective,
        get_trainer_entry,
        list_advantage_estimators,
        list_policy_objectives,
    )

    assert set(BUILTIN_TRAINERS) == set(list_trainers())
    assert set(BUILTIN_ESTIMATORS) == set(list_advantage_estimators())
    assert set(BUILTIN_OBJECTIVES) == set(list_policy_objectives())
    for name, declared in BUILTIN_TRAINERS.items():
        entry = get_trainer_entry(name)
        assert (entry.changes, entry.paper) == (declared.changes, declared.paper)
        assert f"{entry.trainer_cls.__module__}:{entry.trainer_cls.__name__}" == declared.trainer
        assert f"{entry.config_cls.__module__}:{entry.config_cls.__name__}" == declared.config
    for declarations, lookup in (
        (BUILTIN_ESTIMATORS, get_advantage_estimator),
        (BUILTIN_OBJECTIVES, get_policy_objective),
    ):
        for name, declared in declarations.items():
            cls = lookup(name)
            assert f"{cls.__module__}:{cls.__name__}" == declared.path and cls.name == name


NOISE_SCRIPT = """
import sys
from datasets import Dataset
if sys.argv[1] == "trl":
    from trl import GRPOConfig as Config, GRPOTrainer as Trainer
else:
    from trl_ext import BNPOConfig as Config, BNPOTrainer as Trainer
args = Config(output_dir=sys.argv[3], use_cpu=True, disable_tqdm=True, report_to="none", max_steps=1,
              per_device_train_batch_size=4, num_generations=4, max_completion_length=4, save_strategy="no")
trainer = Trainer(model=sys.argv[2], reward_funcs=lambda completions, **kw: [len(c) / 4 for c in completions],
                  args=args, train_dataset=Dataset.from_dict({"prompt": ["1+1="] * 4}))
trainer.train()
trainer.save_model(sys.argv[3])
"""


def test_library_use_prints_no_third_party_noise(tiny_checkpoint, tmp_path):
    # The control: trl.GRPOTrainer with the same settings shows the noise (so the check below can fail); a trl-ext
    # trainer shows none of it. disable_tqdm=True in both.
    noise = ("gemm_4bit_forward", "Loading weights", "Writing model shards", "`gradient_checkpointing` is deprecated")
    outputs = {}
    for library in ("trl", "trl_ext"):
        result = subprocess.run(
            [sys.executable, "-c", NOISE_SCRIPT, library, tiny_checkpoint, str(tmp_path / library)],
            capture_output=True, text=True, timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[library] = result.stdout + result.stderr
    # Which messages the control shows depends on the installed versions (bitsandbytes 0.50 no longer warns about
    # gemm_4bit_forward on CPU): the check needs most of them, and none of the listed ones in trl-ext's output.
    shown = [n for n in noise if n in outputs["trl"]]
    assert len(shown) >= 3, outputs["trl"][-3000:]
    assert [n for n in noise if n in outputs["trl_ext"]] == [], outputs["trl_ext"][-3000:]


def test_recipe_comments_name_metrics_that_exist():
    # A "watch X" comment must name a metric a trainer logs: each `<namespace>/<name>` in a recipe comment appears as
    # a logged key in the package source (a string literal, or an f-string prefix for families of keys).
    import re

    root = Path(__file__).parents[1]
    source = "\n".join(p.read_text() for p in (root / "trl_ext").rglob("*.py"))
    mentioned = {}
    for recipe in (root / "recipes").rglob("*.yaml"):
        for line in recipe.read_text().splitlines():
            comment = line.partition("#")[2]  # (a path such as recipes/bnpo/x.yaml is not a metric)
            for match in re.findall(r"(?<![\w/])((?:bnpo|minpro|hapo|diva|calibadv)/[a-z_0-9]+)(?![\w./-])", comment):
                mentioned.setdefault(match, recipe.name)
    assert mentioned, "no recipe comment names a metric: the check below would pass vacuously"
    missing = {key: where for key, where in mentioned.items() if f'"{key}"' not in source}
    assert not missing, f"recipe comments name metrics no trainer logs: {missing}"


READ_TRACKIO = """
import json, sys
from trackio.sqlite_storage import SQLiteStorage
logs = SQLiteStorage.get_logs(sys.argv[1], sys.argv[2])
print(json.dumps({k: v for log in logs for k, v in log.items() if k.startswith("train/")}))
"""


def test_train_shows_method_metrics_on_the_console_and_in_trackio(tmp_path):
    # `trl-ext train` with the tracker extra: the console line has BNPO's key metrics and trackio (offline, local
    # SQLite) receives every bnpo/* metric next to TRL's.
    trackio_dir = str(tmp_path / "trackio")
    result = _console(
        "train", "--config", str(Path(__file__).parents[1] / "recipes" / "bnpo" / "arithmetic_tiny.yaml"),
        "--max_steps", "2", "--logging_steps", "1", "--output_dir", str(tmp_path / "out"),
        "--report_to", "trackio", "--project", "first-day", "--run_name", "bnpo-run",
        TRACKIO_DIR=trackio_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert len(lines) == 2 and all("| bnpo/alpha " in line and " bnpo/max_weight " in line for line in lines), lines
    read = subprocess.run(
        [sys.executable, "-c", READ_TRACKIO, "first-day", "bnpo-run"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "TRACKIO_DIR": trackio_dir},
    )  # fmt: skip
    assert read.returncode == 0, read.stderr[-3000:]
    import json

    logged = json.loads(read.stdout.strip().splitlines()[-1])
    for key in ("train/reward", "train/loss", "train/bnpo/alpha", "train/bnpo/beta", "train/bnpo/max_weight"):
        assert key in logged and math.isfinite(float(logged[key])), (key, sorted(logged))


@pytest.mark.parametrize("name", ["hapo", "calibadv"])
def test_train_help_lists_the_trainers_own_fields_first(name):
    import dataclasses

    from trl import GRPOConfig

    result = _console("train", "--trainer", name, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    assert text.startswith("usage: trl-ext train [--config FILE.yaml]"), text[:300]
    _, config_cls = get_trainer(name)
    own = [
        f.name
        for f in dataclasses.fields(config_cls)
        if f.name not in {g.name for g in dataclasses.fields(GRPOConfig)}
    ]
    assert len(own) > 5
    own_heading = text.index(f"{name} options ({config_cls.__name__}'s own fields")
    grpo_heading = text.index("GRPOConfig options (TRL's, unchanged)")
    # Every own field is listed under the first heading, before any of TRL's ~250 options.
    assert text.index("-h, --help") < own_heading < grpo_heading
    for field_name in own:
        assert own_heading < text.index(f"  --{field_name} ") < grpo_heading, field_name
    assert grpo_heading < text.index("  --learning_rate ")
    assert text.index("script options") < grpo_heading and "model options (TRL's ModelConfig" in text
