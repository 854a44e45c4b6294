"""The generation seam (trl_ext.generation) and the compat layer (trl_ext.compat): what they promise, checked.

* no trainer branches on the backend: nothing under ``trl_ext/trainers/`` reads ``use_vllm``, ``vllm_mode``,
  ``vllm_generation.mode`` or ``use_transformers_continuous_batching``;
* nothing in the package patches a TRL module global or a model's ``generate``;
* TRL's private symbols are imported in ``trl_ext/compat.py`` only;
* capabilities follow the config; a sampling change is one statement for both backend kinds;
* the compat helpers filter keywords, bind by TRL's own signature and name what is missing.
"""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from trl_ext import compat
from trl_ext.generation import capabilities_of
from trl_ext.rollout.temperature import AdaptiveTemperature, TemperatureStatistics, temperature_extra_args

PACKAGE = Path(__file__).resolve().parents[1] / "trl_ext"
BACKEND_SWITCHES = {"use_vllm", "vllm_mode", "use_transformers_continuous_batching"}


def _code_nodes(path: Path):
    return ast.walk(ast.parse(path.read_text()))


def test_no_trainer_branches_on_the_generation_backend():
    offenders = []
    for path in sorted((PACKAGE / "trainers").glob("*.py")):
        for node in _code_nodes(path):
            if isinstance(node, ast.Attribute) and node.attr in BACKEND_SWITCHES:
                offenders.append(f"{path.name}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.Attribute) and node.attr == "mode":
                if isinstance(node.value, ast.Attribute) and node.value.attr == "vllm_generation":
                    offenders.append(f"{path.name}:{node.lineno} vllm_generation.mode")
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "hasattr"):
                if len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                    if node.args[1].value in BACKEND_SWITCHES:
                        offenders.append(f"{path.name}:{node.lineno} getattr(..., {node.args[1].value!r})")
    assert not offenders, offenders


def test_the_seam_is_the_only_reader_of_the_backend_switches():
    readers = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in _code_nodes(path):
            if isinstance(node, ast.Attribute) and node.attr in BACKEND_SWITCHES:
                readers.add(str(path.relative_to(PACKAGE)))
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr":
                if len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                    if node.args[1].value in BACKEND_SWITCHES:
                        readers.add(str(path.relative_to(PACKAGE)))
    assert readers == {"generation/__init__.py"}, readers


def test_nothing_patches_trl_or_a_models_generate():
    """No assignment to ``<x>.generate``, to an attribute of a module imported from TRL, or to ``<x>.LLM``."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        trl_modules = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "trl":
                trl_modules.update(alias.asname or alias.name for alias in node.names)
            if isinstance(node, ast.Import):
                trl_modules.update(
                    (alias.asname or alias.name).split(".")[0]
                    for alias in node.names
                    if alias.name.split(".")[0] == "trl"
                )
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr" and node.args:
                targets = [ast.Attribute(value=node.args[0], attr=getattr(node.args[1], "value", "?"))]
            for target in targets:
                if not isinstance(target, ast.Attribute):
                    continue
                root = target.value
                if target.attr in ("generate", "LLM") or (isinstance(root, ast.Name) and root.id in trl_modules):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {ast.unparse(target)}")
    assert not offenders, offenders


#: TRL subpackages documented as public API (TRL's reward functions page), importable anywhere.
PUBLIC_TRL_MODULES = {"trl.rewards"}


def test_trl_private_symbols_are_imported_by_compat_only():
    """Outside compat.py the package imports from TRL's top level (and its documented public subpackages) only."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "compat.py" and path.parent == PACKAGE:
            continue
        for node in _code_nodes(path):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trl."):
                if node.module in PUBLIC_TRL_MODULES:
                    continue
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} from {node.module}")
            if isinstance(node, ast.Import):
                offenders += [
                    f"{path.relative_to(PACKAGE)}:{node.lineno} import {a.name}"
                    for a in node.names
                    if a.name.startswith("trl.") and a.name not in PUBLIC_TRL_MODULES
                ]
    assert not offenders, offenders


@pytest.mark.parametrize(
    ("config", "name", "logprobs", "changes", "in_process"),
    [
        (dict(), "transformers", False, True, True),
        (dict(use_transformers_continuous_batching=True), "transformers-continuous-batching", False, False, True),
        (dict(use_vllm=True, vllm_mode="colocate"), "vllm-colocate", True, True, True),
        (dict(use_vllm=True, vllm_mode="server"), "vllm-server", True, True, False),
    ],
)
def test_capabilities_follow_the_config(config, name, logprobs, changes, in_process):
    capabilities = capabilities_of(SimpleNamespace(**config))
    assert capabilities.name == name
    assert capabilities.sampling_logprobs is logprobs
    assert capabilities.sampling_changes is changes
    assert capabilities.samples_in_process is in_process
    # a rollout_func returns log-probs (TRL requires the key), whatever the backend
    assert capabilities_of(SimpleNamespace(**config), rollout_func=lambda p, t: {}).sampling_logprobs


def test_capabilities_reject_an_unknown_vllm_mode():
    with pytest.raises(ValueError, match="vllm_mode"):
        capabilities_of(SimpleNamespace(use_vllm=True, vllm_mode="remote"))


def test_hapo_refuses_continuous_batching_by_capability(tmp_path):
    from trl_ext import HAPOConfig

    with pytest.raises(ValueError, match="transformers-continuous-batching"):
        HAPOConfig(output_dir=str(tmp_path), use_transformers_continuous_batching=True, report_to="none")


def test_one_sampling_change_two_statements():
    from trl_ext.generation.base import SamplingChange, SamplingSettings

    stats = TemperatureStatistics(pivot=-1.0, scale=0.5, scale_pos=0.4, scale_neg=0.3, num_tokens=10)
    change = AdaptiveTemperature(stats, 0.05, "tag-1", finished_token_ids=[0])
    assert isinstance(change, SamplingChange)
    assert change.vllm_extra_args() == temperature_extra_args(stats, 0.05, "tag-1")
    assert AdaptiveTemperature(None, 0.05, "tag-2").vllm_extra_args() == {}  # no statistics: plain T0
    processor = change.logits_processor(SamplingSettings(temperature=0.7, top_k=5))
    assert processor.base_temperature == 0.7 and len(processor.warpers) == 1
    logits = torch.randn(3, 11)
    processor(torch.tensor([[1], [2], [0]]), logits)
    summary = change.summary_tensor()
    assert summary[3] == 2  # the finished row (last token 0) is left out
    assert 0.7 * 0.95 - 1e-6 <= summary[0] <= summary[1] <= 0.7 * 1.05 + 1e-6


def test_temperature_extra_args_refuse_non_finite_statistics():
    stats = TemperatureStatistics(pivot=float("nan"), scale=0.5, scale_pos=0.4, scale_neg=0.3)
    with pytest.raises(ValueError, match="finite"):
        temperature_extra_args(stats, 0.05)


# ---------------------------------------------------------------------------------------------------------------------
# compat
# ---------------------------------------------------------------------------------------------------------------------


def test_call_accepted_leaves_out_keywords_the_callee_lacks():
    def older(model, ids, *, compute_entropy=False):
        return model, ids, compute_entropy

    assert compat.call_accepted(older, 1, 2, compute_entropy=True, image_position_ids=None) == (1, 2, True)

    def any_keywords(model, **kwargs):
        return kwargs

    assert compat.call_accepted(any_keywords, 1, a=1, b=2) == {"a": 1, "b": 2}


def test_single_turn_arguments_bind_by_trls_signature():
    bound = compat.single_turn_arguments(([[1, 2]], None, {}, 4), {})
    assert bound["prompt_ids"] == [[1, 2]] and bound["num_generations"] == 4 and bound["multimodal_fields"] == {}
    assert "has_tool_images" in bound  # defaults applied


def test_grpo_trainer_arguments_bind_by_name():
    bound = compat.grpo_trainer_arguments(("model-id",), {"reward_funcs": []})
    assert bound.arguments["model"] == "model-id" and bound.arguments["reward_funcs"] == []
    assert bound.arguments.get("args") is None


def test_trainer_attr_defaults_or_names_what_is_missing():
    owner = SimpleNamespace(present=3)
    assert compat.trainer_attr(owner, "present") == 3
    assert compat.trainer_attr(owner, "absent", None) is None
    with pytest.raises(AttributeError, match=r"SimpleNamespace\.absent \(needed for the test\).*TRL"):
        compat.trainer_attr(owner, "absent", needed_for="the test")


def test_vllm_sleep_mode_sleeps_again_after_a_rollout_and_repushes_discarded_weights():
    # HAPO's and CalibAdv's rollouts sample through open_backend, not TRL's VLLMGeneration.generate. With sleep mode a
    # colocated engine must be asleep (level 2: weights discarded) outside generation, as after TRL's own generate,
    # and the next rollout must push the weights again even within the same optimizer step.
    from trl_ext.generation import open_backend

    class Engine:
        def __init__(self, events):
            self.events = events

        def sleep(self, level):
            self.events.append(f"sleep{level}")

        def wake_up(self, tags=None):
            self.events.append(f"wake:{','.join(tags)}")

    class Generation(SimpleNamespace):
        def sync_weights(self):  # TRL wakes the weights, then loads them
            self.llm.wake_up(tags=["weights"])
            self._llm_weights_sleeping = False
            self.events.append("sync")

    def trainer(sleep_mode, mode="colocate"):
        events = []
        generation = Generation(mode=mode, tensor_parallel_size=1, enable_sleep_mode=sleep_mode, events=events,
                                llm=Engine(events), _llm_weights_sleeping=sleep_mode)  # fmt: skip
        return SimpleNamespace(args=SimpleNamespace(use_vllm=True, vllm_mode=mode), vllm_generation=generation,
                               processing_class=SimpleNamespace(eos_token_id=2), eos_token_ids=[2], accelerator=None,
                               state=SimpleNamespace(global_step=3), _last_loaded_step=3)  # fmt: skip

    owner = trainer(sleep_mode=True)
    for _ in range(2):  # two rollouts in one optimizer step (e.g. steps_per_generation < gradient accumulation)
        with open_backend(owner) as backend:
            assert owner.vllm_generation._llm_weights_sleeping is False  # weights are in the engine while sampling
            assert backend.vllm_generation is owner.vllm_generation
        assert owner.vllm_generation._llm_weights_sleeping is True
    assert owner.vllm_generation.events == ["wake:weights", "sync", "sleep2"] * 2

    for sleep_mode, mode in ((False, "colocate"), (True, "server")):  # no sleep mode, or a server: nothing of it
        owner = trainer(sleep_mode=sleep_mode, mode=mode)
        with open_backend(owner):
            pass
        assert owner.vllm_generation.events == []
