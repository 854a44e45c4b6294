"""One optimizer step of BaseGRPOTrainer on a fixed global batch; every process records what it saw.

Run it with ``accelerate launch --num_processes 2 --cpu ...`` (or plain ``python`` for one process) on the same
arguments: the global batch (prompts, completions, rewards) is identical whatever the number of processes, so the
per-process records can be compared with the single-process ones (see ``tests/test_distributed.py``).

Generation is replaced by a fixed table of completions per prompt (``FIXED_COMPLETIONS``), so nothing is sampled.
The dataset is not shuffled, so process p holds rows ``[p * B, (p + 1) * B)`` of the global batch.

For every configuration named on the command line the script builds a fresh trainer, trains one step (SGD, no
clipping that could act) and writes ``<out>/<config>/rank<process index>.pt`` with:

* ``prompts``, ``ids``, ``completions``: the local rows, in order;
* ``local_advantages``: ``output["advantages"]`` of the generation batch (what the loss trains on);
* ``full_advantages``, ``rewards_per_func``, ``completion_mask``, ``completion_lengths``, ``ids_gathered``: what
  the estimator received and returned on this process (the whole gathered batch);
* ``process_slice``: ``(start, stop)``;
* ``losses``: the local loss of every micro-batch; ``logged_loss``: the loss in ``log_history`` (reduced);
* ``grads``: every parameter's gradient just before the optimizer step (after DDP's all-reduce).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer, TrainerCallback  # noqa: E402

from trl_ext import BaseGRPOTrainer, get_trainer, register_advantage_estimator  # noqa: E402
from trl_ext.advantages.base import AdvantageBatch, AdvantageEstimator, AdvantageOutput  # noqa: E402

NUM_GENERATIONS = 4
MAX_COMPLETION_LENGTH = 8

# Prompt -> its G completions. Groups differ in mean reward and in length: the groups of the first half of the batch
# are short and those of the second half long, so the two processes' local completion widths differ.
FIXED_COMPLETIONS = {
    "1+1=": ["2", "2", "11", "3"],
    "2+2=": ["4", "44", "4", "5"],
    "3+4=": ["7", "7 is it", "6", "77777777777"],
    "5+5=": ["10", "ten", "1 0", "10!"],
}
PROMPTS = list(FIXED_COMPLETIONS)

# name -> BaseGRPOConfig overrides
CONFIGS = {
    "dapo_group": {"loss_type": "dapo", "scale_rewards": "group"},
    "grpo_batch": {"loss_type": "grpo", "scale_rewards": "batch"},
    "token_dapo": {"loss_type": "dapo", "advantage_estimator": "test_token_level"},
    # BNPO's Beta fit uses every group of the global batch; decomposed, one fit per reward function.
    "bnpo_decomposed": {
        "trainer": "bnpo",
        "loss_type": "dapo",
        "bnpo_advantage_decomposition": True,
        "bnpo_reward_min": [0.0, 0.0],
        "bnpo_reward_max": [1.0, 2.0],
    },
}


def correct_reward(prompts, completions, **kwargs):
    """1 if the completion is the sum the prompt asks for."""
    answers = [sum(int(term) for term in p.rstrip("=").split("+")) for p in prompts]
    return [float(c.strip() == str(a)) for a, c in zip(answers, completions, strict=True)]


def length_reward(prompts, completions, **kwargs):
    """Completion length in characters / 8, plus a per-prompt offset so that group means differ."""
    return [len(c) / 8 + 0.25 * PROMPTS.index(p) for p, c in zip(prompts, completions, strict=True)]


@register_advantage_estimator("test_token_level", overwrite=True)
class TokenLevelTestEstimator(AdvantageEstimator):
    """Token-level advantages that depend on facts of the whole gathered batch.

    A[i, t] = (R_i - mean_all(R) + 0.1 * rank(id_i)) * (t + 1) / max_all(length) * mask[i, t]
    """

    requires = frozenset({"completion_lengths", "completion_mask"})
    columns = ("id",)

    def __call__(self, batch: AdvantageBatch) -> AdvantageOutput:
        rewards = (batch.rewards_per_func.nan_to_num() * batch.reward_weights).sum(dim=1)
        order = sorted(set(batch.columns["id"]))
        id_rank = torch.tensor([float(order.index(i)) for i in batch.columns["id"]])
        per_sequence = rewards - rewards.mean() + 0.1 * id_rank
        width = batch.completion_mask.size(1)
        position = torch.arange(1, width + 1, dtype=torch.float32)
        ramp = position / batch.completion_lengths.float().max()
        advantages = per_sequence[:, None] * ramp[None, :] * batch.completion_mask.float()
        return AdvantageOutput(
            advantages, metrics={"test/mean_length": batch.completion_lengths.float().mean().item()}
        )


class FixedCompletionTrainer(BaseGRPOTrainer):
    """BaseGRPOTrainer whose generation returns ``FIXED_COMPLETIONS`` and which records what the seams see."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.record: dict = {"losses": []}

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        tokenizer = self.processing_class
        if len(prompt_ids) % num_generations:
            raise RuntimeError("the local batch must hold whole groups")
        completion_ids, prompts, completions = [], [], []
        for row, ids in enumerate(prompt_ids):
            prompt = tokenizer.decode(ids, skip_special_tokens=True)
            text = FIXED_COMPLETIONS[prompt][row % num_generations]
            token_ids = tokenizer(text, add_special_tokens=False)["input_ids"][:MAX_COMPLETION_LENGTH]
            if len(token_ids) < MAX_COMPLETION_LENGTH:
                token_ids = token_ids + [tokenizer.eos_token_id]
            completion_ids.append(token_ids)
            prompts.append(prompt)
            completions.append(text[:MAX_COMPLETION_LENGTH])
        self.record["prompts"] = prompts
        self.record["completions"] = completions
        return completion_ids, None

    def build_advantage_batch(self, inputs, output, rewards_per_func, mode):
        self.record["ids"] = [row["id"] for row in inputs]
        return super().build_advantage_batch(inputs, output, rewards_per_func, mode)

    def _check_advantages(self, advantages, batch):
        advantages = super()._check_advantages(advantages, batch)
        self.record.update(
            full_advantages=advantages.detach().clone(),
            rewards_per_func=batch.rewards_per_func.detach().clone(),
            process_slice=(batch.process_slice.start, batch.process_slice.stop),
            completion_mask=None if batch.completion_mask is None else batch.completion_mask.detach().clone(),
            completion_lengths=None if batch.completion_lengths is None else batch.completion_lengths.detach().clone(),
            ids_gathered=batch.columns.get("id"),
        )
        return advantages

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        self.record["local_advantages"] = output["advantages"].detach().clone()
        self.record["local_completion_mask"] = output["completion_mask"].detach().clone()
        return output

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self.record["losses"].append(loss.detach().item())
        return loss


class GradientRecorder(TrainerCallback):
    """Copies every gradient after DDP's all-reduce and clipping, just before the optimizer step."""

    def __init__(self, trainer: FixedCompletionTrainer) -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.record["grads"] = {
            name: param.grad.detach().clone()
            for name, param in self.trainer.model.named_parameters()
            if param.grad is not None
        }


def run(config_name: str, checkpoint: str, out_dir: str, per_device_batch: int) -> None:
    dataset = Dataset.from_dict({"prompt": PROMPTS, "id": [f"q{i}" for i in range(len(PROMPTS))]})
    overrides = dict(CONFIGS[config_name])
    _, config_cls = get_trainer(overrides.pop("trainer", "grpo"))
    args = config_cls(
        output_dir=os.path.join(out_dir, "trainer", config_name),
        per_device_train_batch_size=per_device_batch,
        num_generations=NUM_GENERATIONS,
        max_completion_length=MAX_COMPLETION_LENGTH,
        shuffle_dataset=False,
        optim="sgd",
        learning_rate=1e-2,
        max_grad_norm=1e9,
        max_steps=1,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,  # GRPOConfig defaults to bf16 autocast; float32 makes the identities exact to round-off
        seed=0,
        disable_tqdm=True,
        **overrides,
    )
    trainer = FixedCompletionTrainer(
        model=checkpoint,
        reward_funcs=[correct_reward, length_reward],
        args=args,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(checkpoint),
    )
    trainer.add_callback(GradientRecorder(trainer))
    trainer.train()

    record = trainer.record
    record["logged_loss"] = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
    record["num_processes"] = trainer.accelerator.num_processes
    target = os.path.join(out_dir, config_name)
    os.makedirs(target, exist_ok=True)
    torch.save(record, os.path.join(target, f"rank{trainer.accelerator.process_index}.pt"))
    trainer.accelerator.wait_for_everyone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="tiny checkpoint directory (build_tiny_checkpoint)")
    parser.add_argument("--out", required=True, help="directory for the per-process records")
    parser.add_argument("--per-device-batch", type=int, required=True, help="rows per process (whole groups)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {sorted(CONFIGS)}")
    cli = parser.parse_args()
    for name in cli.configs.split(","):
        run(name, cli.checkpoint, cli.out, cli.per_device_batch)


if __name__ == "__main__":
    main()
    import torch.distributed

    if torch.distributed.is_initialized():  # join gloo's threads before exit: without it a rare abort at teardown
        torch.distributed.destroy_process_group()  # ("terminate called without an active exception") fails the run
