"""Names the drift detector relies on: where things are, which TRL classes and receivers it knows."""

from __future__ import annotations

from pathlib import Path

CATEGORIES = ("overrides", "calls", "imports", "attributes", "batch_keys", "writes")
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # trl_ext/
FINGERPRINTS_DIR = PACKAGE_ROOT / "trl_fingerprints"
RECORD_COMMAND = "python -m trl_ext.drift record"

#: TRL classes whose instances trl-ext handles, and where TRL defines them.
TRL_CLASSES = {
    "GRPOTrainer": "trl.trainer.grpo_trainer",
    "VLLMGeneration": "trl.generation.vllm_generation",
    "VLLMClient": "trl.generation.vllm_client",
}
TRAINER = "GRPOTrainer"
#: Receiver names (the last segment of the receiver expression) taken to be a TRL object of that class.
GENERATION_RECEIVERS = frozenset({"vllm_generation", "generation"})
CLIENT_RECEIVERS = frozenset({"vllm_client"})
#: Receivers (as source text) taken to be TRL's batch dict (what ``_generate_and_score_completions`` returns).
BATCH_RECEIVERS = frozenset({"inputs", "output", "batch", "ctx.inputs"})
BATCH_METHOD = "_generate_and_score_completions"
