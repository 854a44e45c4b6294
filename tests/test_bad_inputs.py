"""Bad inputs handled badly before (issue 27): each is reproduced here and must fail with a message naming the input
(before training where it can be checked then), or warn where the input is legal."""

from __future__ import annotations

import pytest
import yaml
from calibadv_helpers import deepsearch_checkpoint_fixture  # noqa: F401  (fixture)
from conftest import length_reward

from trl_ext.training import TrainScriptArguments, make_train_parser, resolve_reward_funcs


# -- reward_funcs written as one name ----------------------------------------------------------------------------------
def test_a_single_reward_name_in_yaml_is_a_list_of_one(tmp_path):
    # Before, the string was iterated: "reward_funcs: cannot resolve 't'".
    from trl.rewards import think_format_reward

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {"trainer": "grpo", "output_dir": str(tmp_path), "use_cpu": True, "reward_funcs": "think_format_reward"}
        )
    )
    script_args, *_ = make_train_parser("grpo").parse_args_and_config(["--config", str(recipe)])
    assert script_args.reward_funcs == "think_format_reward"  # what TRL's parser hands over
    assert resolve_reward_funcs(script_args, None) == [think_format_reward]


def test_reward_funcs_of_another_type_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"^reward_funcs: expected a name or a list of names .* got 3"):
        resolve_reward_funcs(TrainScriptArguments(reward_funcs=3), None)


# -- a reward function returning strings -------------------------------------------------------------------------------
def _grpo_args(config_cls, output_dir, **overrides):
    settings = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=4,
        max_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    return config_cls(**{**settings, **overrides})


def string_reward(completions, **kwargs):
    return [0.5 if i != 2 else "0.5" for i in range(len(completions))]


async def async_string_reward(completions, **kwargs):
    return string_reward(completions)


@pytest.mark.parametrize("reward", [string_reward, async_string_reward])
def test_a_reward_function_returning_a_string_is_named_with_the_completion(
    tiny_checkpoint, toy_dataset, tmp_path, reward
):
    # Before: ValueError "too many dimensions 'str'" from torch inside TRL, naming no function.
    from trl_ext import get_trainer

    trainer_cls, config_cls = get_trainer("grpo")
    trainer = trainer_cls(
        model=tiny_checkpoint,
        reward_funcs=[length_reward, reward],
        args=_grpo_args(config_cls, tmp_path),
        train_dataset=toy_dataset,
    )
    with pytest.raises(
        ValueError, match=rf"^reward function '{reward.__name__}' returned str '0.5' for completion 2; "
    ):
        trainer.train()
    assert trainer.reward_func_names == ["length_reward", reward.__name__]  # the wrapper keeps TRL's names
    assert trainer.reward_funcs[1].__wrapped__ is reward


def test_reward_values_that_are_numbers_or_none_pass_the_check():
    import numpy as np
    import torch

    from trl_ext.trainers.checks import check_reward_values

    values = [1, 0.5, True, None, np.float32(0.25), np.int64(3), torch.tensor(0.5), np.array(1.0)]
    assert check_reward_values(values, "r") is values
    assert check_reward_values(iter([0.5, None]), "r") == [0.5, None]  # a generator is read once, here
    with pytest.raises(ValueError, match=r"^reward function 'r' returned float 0.5, not a list"):
        check_reward_values(0.5, "r")
    with pytest.raises(ValueError, match=r"^reward function 'r' returned list \[0.5\] for completion 1"):
        check_reward_values([0.5, [0.5]], "r")


# -- a dataset without a prompt column ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["grpo", "bnpo", "minpro", "hapo", "diva", "calibadv"])
def test_a_dataset_without_a_prompt_column_is_refused_listing_its_columns(toy_dataset, tmp_path, name):
    # Before: KeyError: 'prompt' at step 1, after the model had loaded.
    from trl_ext import get_trainer

    trainer_cls, config_cls = get_trainer(name)
    extra = {"calibadv_corpus_path": "deepsearch"} if name == "calibadv" else {}
    args = config_cls(
        output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=16, num_generations=2, max_steps=1, **extra
    )
    no_prompt = toy_dataset.rename_column("prompt", "problem")
    accepted = "'prompt' or 'question'" if name == "calibadv" else "'prompt'"
    message = (
        rf"^train_dataset: no {accepted} column; the dataset has columns \['problem', 'id'\]\. .*"
        r"dataset\.rename_column\('problem', 'prompt'\)"
    )
    # The model path does not exist: the check comes before the model loads.
    with pytest.raises(ValueError, match=message):
        trainer_cls(model=str(tmp_path / "no-model"), reward_funcs=length_reward, args=args, train_dataset=no_prompt)
    with pytest.raises(ValueError, match=r"^eval_dataset\['held_out'\]: no "):
        trainer_cls(
            model=str(tmp_path / "no-model"),
            reward_funcs=length_reward,
            args=args,
            train_dataset=toy_dataset,
            eval_dataset={"held_out": no_prompt},
        )


# -- max_steps 0 and a trainer named twice in compare ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["grpo", "bnpo", "minpro", "hapo", "diva", "calibadv"])
def test_max_steps_zero_or_below_minus_one_is_refused_by_every_config(tmp_path, name):
    # Before: max_steps 0 trained one step and saved a model.
    from trl_ext import get_trainer

    _, config_cls = get_trainer(name)
    extra = {"calibadv_corpus_path": "deepsearch"} if name == "calibadv" else {}
    for steps in (0, -2):
        with pytest.raises(ValueError, match=rf"^max_steps must be a positive number .* or -1 .*; got {steps}$"):
            config_cls(output_dir=str(tmp_path), use_cpu=True, max_steps=steps, **extra)
    assert config_cls(output_dir=str(tmp_path), use_cpu=True, **extra).max_steps == -1  # TRL's "use the epochs"
    assert config_cls(output_dir=str(tmp_path), use_cpu=True, max_steps=1, **extra).max_steps == 1


def test_train_refuses_max_steps_zero_while_parsing(tmp_path):
    parser = make_train_parser("grpo")
    with pytest.raises(ValueError, match=r"^max_steps must be a positive number"):
        parser.parse_args_and_config(["--output_dir", str(tmp_path), "--use_cpu", "true", "--max_steps", "0"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--trainers", "grpo", "grpo"], "--trainers: 'grpo' named more than once"),
        (["--trainers", "grpo", "bnpo", "--max_steps", "0"], "--max_steps must be at least 1, got 0"),
        (["--trainers", "grpo", "--max_steps", "-1"], "--max_steps must be at least 1, got -1"),
    ],
)
def test_compare_refuses_a_repeated_trainer_and_max_steps_below_one(tmp_path, capsys, argv, message):
    # Before: `--trainers grpo grpo` silently ran one arm.
    from trl_ext.cli import main

    assert main(["compare", *argv, "--task", "arithmetic", "--tiny_model", "--output_dir", str(tmp_path / "out")]) == 2
    assert f"trl-ext compare: error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_compare_names_the_arm_whose_recipe_sets_max_steps_zero(tmp_path):
    from trl_ext.compare import compare

    with pytest.raises(ValueError, match=r"^arm 'grpo': max_steps must be a positive number"):
        compare(["grpo"], config={"max_steps": 0, "use_cpu": True}, seeds=1, output_dir=tmp_path, log=lambda *_: None)


# -- a JSONL corpus without 'text' -------------------------------------------------------------------------------------
def test_a_corpus_with_title_and_body_names_the_file_the_field_and_the_fields_found(
    tiny_checkpoint, toy_dataset, tmp_path
):
    # Before: every record became a document with an empty text, accepted silently.
    import json

    from trl_ext import get_trainer

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": str(i), "title": f"T{i}", "body": f"text {i}"}) + "\n" for i in range(148))
    )
    trainer_cls, config_cls = get_trainer("calibadv")
    args = config_cls(
        output_dir=str(tmp_path), use_cpu=True, calibadv_corpus_path=str(corpus), num_generations=2, max_steps=1
    )
    message = (
        rf"^calibadv_corpus_path: {corpus}, line 1: a corpus record needs a 'text' field .* or a 'contents' string "
        r".*; this one has the fields \['body', 'id', 'title'\]"
    )
    with pytest.raises(ValueError, match=message):
        trainer_cls(model=tiny_checkpoint, reward_funcs=length_reward, args=args, train_dataset=toy_dataset)


# -- a retriever that finds nothing ------------------------------------------------------------------------------------
def test_a_server_answering_the_health_query_with_nothing_is_warned_about():
    import warnings

    from test_retrieval import MockServer, ok

    from trl_ext.retrieval import HTTPRetriever

    with MockServer(ok(lambda body: [[] for _ in body["queries"]])) as server:
        with pytest.warns(
            UserWarning, match=r"calibadv_retriever_url='http://.*': .*health query 'health check' with no"
        ):
            HTTPRetriever(server.url).check()
    with warnings.catch_warnings(), MockServer(ok(lambda body: [["T\nx"] for _ in body["queries"]])) as server:
        warnings.simplefilter("error")  # a server that finds documents: no warning
        HTTPRetriever(server.url).check()


def test_searches_answered_with_no_document_are_logged_as_empty_observations(deepsearch_checkpoint, tmp_path):
    # Before: CalibAdv trained on empty <information> blocks without a word. A retriever that finds nothing for any
    # query; a scripted policy searches twice (found nothing, then "known" finds documents) and answers.
    from calibadv_helpers import FakeRetriever, ScriptedTurns
    from datasets import Dataset
    from transformers import AutoTokenizer

    from trl_ext import get_trainer
    from trl_ext.rewards.qa import qa_f1_format_reward

    prompts = [f"question {i}?" for i in range(4)]
    dataset = Dataset.from_dict({"prompt": prompts, "golden_answers": [["yes"]] * 4})
    trainer_cls, config_cls = get_trainer("calibadv")
    args = config_cls(
        output_dir=str(tmp_path),
        use_cpu=True,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=300,
        max_steps=1,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        calibadv_corpus_path="deepsearch",
        calibadv_max_turns=2,
        calibadv_max_tokens_per_turn=48,
        calibadv_topk=1,
    )
    retriever = FakeRetriever(empty=["nothing"])
    trainer = trainer_cls(
        model=deepsearch_checkpoint,
        reward_funcs=[qa_f1_format_reward],
        args=args,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(deepsearch_checkpoint),
        retriever=retriever,
    )
    turns = ["<think>a</think><search> nothing </search>", "<think>b</think><search> known </search>"]
    scripts = {prompt: [*turns, "<think>c</think><answer> yes </answer>"] for prompt in prompts}
    trainer.rollout_func.logits_processors.append(ScriptedTurns(trainer.processing_class, scripts))
    trainer.train()
    assert {query for queries, _ in retriever.calls for query in queries} == {"nothing", "known"}
    logged = [entry["calibadv/empty_observation_frac"] for entry in trainer.state.log_history if "loss" in entry]
    assert logged == [0.5]  # one search of two came back empty in every trajectory


# -- trl_ext_state.json of the wrong structure -------------------------------------------------------------------------
def _hapo(checkpoint, dataset, output_dir, max_steps):
    from trl_ext import get_trainer

    trainer_cls, config_cls = get_trainer("hapo")
    args = _grpo_args(config_cls, output_dir, max_steps=max_steps, save_strategy="steps", save_steps=1)
    return trainer_cls(model=checkpoint, reward_funcs=[length_reward], args=args, train_dataset=dataset)


@pytest.fixture(scope="module")
def hapo_checkpoint(tiny_checkpoint, toy_dataset, tmp_path_factory):
    """checkpoint-1 of a HAPO run (its state holds the adaptive temperature's statistics)."""
    output_dir = tmp_path_factory.mktemp("hapo-run")
    _hapo(tiny_checkpoint, toy_dataset, output_dir, max_steps=1).train()
    return output_dir / "checkpoint-1"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda state: state["trainer"].update(hapo_temperature="abc"),
            r"key 'trainer\.hapo_temperature' must be a JSON object with 'current', 'pending' and 'updates', got str",
        ),
        (
            lambda state: state["trainer"]["hapo_temperature"]["pending"].update(scale="0.5"),
            r"key 'trainer\.hapo_temperature\.pending\.scale' must be a number, got str",
        ),
        (
            lambda state: state["trainer"]["hapo_temperature"].update(updates=-1),
            r"key 'trainer\.hapo_temperature\.updates' must be an integer >= 0, got int",
        ),
        (
            lambda state: state.update(advantage_estimator_name=["hapo_tlga"]),
            r"key 'advantage_estimator_name' must be a string \(the advantage estimator's registered name\), got list",
        ),
        (
            lambda state: state.update(policy_objective=[]),
            r"key 'policy_objective' must be a JSON object \(the policy objective's state\), got list",
        ),
    ],
    ids=["hapo_temperature_str", "statistic_str", "updates_negative", "estimator_name_list", "objective_state_list"],
)
def test_a_wrong_typed_state_entry_names_the_file_the_key_and_the_type(
    hapo_checkpoint, tiny_checkpoint, toy_dataset, tmp_path, edit, message
):
    # Before: AttributeError: 'str' object has no attribute 'get' on resume, for the first example.
    import json
    import shutil

    from trl_ext.trainers.persistence import STATE_FILE

    checkpoint = tmp_path / "checkpoint-1"
    shutil.copytree(hapo_checkpoint, checkpoint)
    state = json.loads((checkpoint / STATE_FILE).read_text())
    assert state["trainer"]["hapo_temperature"]["pending"] is not None  # the run computed statistics
    edit(state)
    (checkpoint / STATE_FILE).write_text(json.dumps(state))
    resumed = _hapo(tiny_checkpoint, toy_dataset, tmp_path / "out", max_steps=2)
    with pytest.raises(ValueError, match=rf"^resume_from_checkpoint: {checkpoint / STATE_FILE}: {message}"):
        resumed.train(resume_from_checkpoint=str(checkpoint))


# -- resuming: truncated weights, another model's checkpoint, tied weights reported missing ----------------------------
def _grpo(checkpoint, dataset, output_dir, max_steps):
    from trl_ext import get_trainer

    trainer_cls, config_cls = get_trainer("grpo")
    args = _grpo_args(config_cls, output_dir, max_steps=max_steps, save_strategy="steps", save_steps=1, seed=0)
    return trainer_cls(model=checkpoint, reward_funcs=[length_reward], args=args, train_dataset=dataset)


@pytest.fixture(scope="module")
def grpo_run(tiny_checkpoint, toy_dataset, tmp_path_factory):
    """An uninterrupted 2-step GRPO run of the tied-embedding tiny model, a checkpoint every step."""
    output_dir = tmp_path_factory.mktemp("grpo-run")
    trainer = _grpo(tiny_checkpoint, toy_dataset, output_dir, max_steps=2)
    trainer.train()
    return trainer, output_dir


def _copy_checkpoint(grpo_run, tmp_path):
    import shutil

    checkpoint = tmp_path / "checkpoint-1"
    shutil.copytree(grpo_run[1] / "checkpoint-1", checkpoint)
    return checkpoint


@pytest.mark.parametrize("keep", [0.5, 0.999, 4])
def test_a_truncated_weights_file_is_named_before_resuming(grpo_run, tiny_checkpoint, toy_dataset, tmp_path, keep):
    # Before: safetensors' "incomplete metadata, file not fully covered", naming no file.
    checkpoint = _copy_checkpoint(grpo_run, tmp_path)
    weights = checkpoint / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    resumed = _grpo(tiny_checkpoint, toy_dataset, tmp_path / "out", max_steps=2)
    with pytest.raises(ValueError, match=rf"^resume_from_checkpoint: {weights} is truncated or corrupt \("):
        resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 0  # refused before any step


def test_resuming_another_models_checkpoint_names_both_models(grpo_run, toy_dataset, tmp_path):
    # Before: torch's "size mismatch for model.embed_tokens.weight" deep in train().
    from trl_ext.tiny_models import build_tiny_checkpoint

    checkpoint = _copy_checkpoint(grpo_run, tmp_path)  # hidden_size 64, 62 tokens
    other = build_tiny_checkpoint(tmp_path / "other", alphabet="0123456789+=", hidden_size=32)
    resumed = _grpo(other, toy_dataset, tmp_path / "out", max_steps=2)
    message = (
        rf"^resume_from_checkpoint: checkpoint {checkpoint} was saved from a different model with vocab_size 62, "
        rf"hidden_size 64, intermediate_size 256; this run's model \({other}\) has vocab_size \d+, hidden_size 32, "
        r"intermediate_size 128\. Resume with the model the checkpoint was trained from"
    )
    with pytest.raises(ValueError, match=message):
        resumed.train(resume_from_checkpoint=str(checkpoint))


@pytest.fixture
def transformers_warnings():
    """The records transformers logs at WARNING and above during the test (the tests run with its verbosity at
    error, which would hide the line in question)."""
    import logging

    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        hf_logging.set_verbosity(previous)


def test_resuming_a_tied_embedding_model_reports_no_missing_lm_head_and_is_exact(
    grpo_run, tiny_checkpoint, toy_dataset, tmp_path, transformers_warnings
):
    # Before: every resume logged "There were missing keys in the checkpoint model loaded: ['lm_head.weight']".
    import torch

    original, _ = grpo_run
    checkpoint = _copy_checkpoint(grpo_run, tmp_path)
    resumed = _grpo(tiny_checkpoint, toy_dataset, tmp_path / "out", max_steps=2)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert not [r for r in transformers_warnings if "missing keys" in r.getMessage()]
    # The resume is exact: the tied head is the loaded embedding, and step 2 equals the uninterrupted step 2.
    assert resumed.model.lm_head.weight is resumed.model.model.embed_tokens.weight
    expected = dict(original.model.named_parameters())
    for name, value in resumed.model.named_parameters():
        torch.testing.assert_close(value, expected[name], atol=1e-6, rtol=0, msg=name)


def test_a_key_missing_for_real_is_still_reported(
    grpo_run, tiny_checkpoint, toy_dataset, tmp_path, transformers_warnings
):
    # The filter is targeted: a weight that is not tied and absent from the checkpoint is still named (alone).
    from safetensors.torch import load_file, save_file

    checkpoint = _copy_checkpoint(grpo_run, tmp_path)
    weights = load_file(checkpoint / "model.safetensors")
    del weights["model.norm.weight"]
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    resumed = _grpo(tiny_checkpoint, toy_dataset, tmp_path / "out", max_steps=2)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    missing = [r.getMessage() for r in transformers_warnings if "missing keys" in r.getMessage()]
    assert missing == ["There were missing keys in the checkpoint model loaded: ['model.norm.weight']."]
