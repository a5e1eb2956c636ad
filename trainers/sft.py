"""SFT baseline: `python -m trainers.sft [--config run.yaml] [--flags]`.

TRL's SFTTrainer on the prompt-completion pairs of `trainers.data` (loss on the answer and its end-of-turn
token only), plus what a fair comparison with the contrastive method needs: every trainer here counts the
tokens it processes, its training FLOPs and the wall time of its optimizer steps (`ComputeAccountant`), can
stop at a FLOP or a time budget, and ends by writing a plain HF checkpoint (LoRA merged) with a model card
recording method, configuration, seed, data hash, tokens, FLOPs, training time and what stopped it.
Multi-GPU runs come from `accelerate launch` / `torchrun`, through the Trainer.

This module also holds the run machinery both methods share (`prepare`, `train_and_save`, `main_for`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never try the hub

import torch
import yaml
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from trl import SFTTrainer, TrlParser

from absence_tasks.models import END_OF_TURN, load_checkpoint_or_die
from absence_tasks.io import default_file_mode
from absence_tasks.schema import DataError, Instance, atomic_write_text, write_jsonl
from trainers.config import AbsenceSFTConfig, ScriptArguments
from trainers.data import data_sha256, drop_overlong, load_training_instances, sft_dataset
from trainers.losses import step_flops

CARD_NAME = "README.md"
DATA_NAME = "training_data.jsonl"
# Written last: a directory is a finished model only once its card exists (config.json comes just before).
FINAL_FILES_LAST = ("config.json", CARD_NAME)


# ---- compute accounting --------------------------------------------------------------------------

def matmul_parameter_count(model: torch.nn.Module) -> int:
    """N in 6·N·tokens: every parameter a token's compute goes through. The input embedding is a lookup,
    not a matmul, so it counts only when tied to the output projection (then it IS that projection)."""
    total = sum(p.numel() for p in model.parameters())
    input_embeddings, output_embeddings = model.get_input_embeddings(), model.get_output_embeddings()
    if output_embeddings is None or input_embeddings.weight is not output_embeddings.weight:
        total -= input_embeddings.weight.numel()
    return total


class ComputeAccountant(TrainerCallback, ExportableState):
    """Tokens and FLOPs of a run, summed over all processes, and the wall seconds spent in its optimizer
    steps (each from the step's start to its end: forward, backward, update — not start-up, logging or
    checkpoint saving); stops training at `budget_flops` or `budget_seconds`, whichever comes first.

    Its counts live in trainer_state.json (`stateful_callbacks`), so a resumed run continues them (the
    steps after the last checkpoint are done again, and counted again: their first attempt was lost)."""

    # What on_train_begin takes back from a checkpoint: the counts, not the stop flags of an earlier session.
    COUNTS = ("instances_trained", "tokens_trained", "tokens_forward_only", "flops", "train_seconds")

    def __init__(self, n_params: int = 0, budget_flops: float | None = None, budget_seconds: float | None = None):
        self.n_params = n_params
        self.budget_flops = budget_flops
        self.budget_seconds = budget_seconds
        self.instances_trained = 0
        self.tokens_trained = 0
        self.tokens_forward_only = 0
        self.flops = 0
        self.train_seconds = 0.0
        self.stopped_by_budget = False
        self.stopped_by_time = False
        self._step_started = time.perf_counter()

    def add(self, trained_tokens: int, forward_only_tokens: int = 0, instances: int = 0) -> None:
        self.instances_trained += instances
        self.tokens_trained += trained_tokens
        self.tokens_forward_only += forward_only_tokens
        self.flops += step_flops(self.n_params, trained_tokens, forward_only_tokens)

    def stopped_by(self) -> list[str]:
        """The budgets (their flag names) that ended the run; empty when it ran to its step/epoch limit."""
        return [name for name, hit in (("compute_budget_flops", self.stopped_by_budget),
                                       ("max_train_seconds", self.stopped_by_time)) if hit]

    def summary(self) -> dict[str, Any]:
        return {"n_params": self.n_params, "instances_trained": self.instances_trained,
                "tokens_trained": self.tokens_trained,
                "tokens_forward_only": self.tokens_forward_only, "flops": self.flops,
                "train_seconds": round(self.train_seconds, 3), "budget_flops": self.budget_flops,
                "budget_seconds": self.budget_seconds, "stopped_by_budget": self.stopped_by_budget,
                "stopped_by_time": self.stopped_by_time, "stopped_by": self.stopped_by()}

    def state(self) -> dict[str, Any]:
        return {"args": {"n_params": self.n_params, "budget_flops": self.budget_flops,
                         "budget_seconds": self.budget_seconds},
                "attributes": {"instances_trained": self.instances_trained, "tokens_trained": self.tokens_trained,
                               "tokens_forward_only": self.tokens_forward_only,
                               "flops": self.flops, "train_seconds": self.train_seconds,
                               "stopped_by_budget": self.stopped_by_budget, "stopped_by_time": self.stopped_by_time}}

    def on_train_begin(self, args, state, control, **kwargs):
        # transformers restores callback state only with restore_callback_states_from_checkpoint; the counts
        # must survive a resume whatever that flag says, so take them from the loaded state ourselves.
        saved = state.stateful_callbacks.get(type(self).__name__)
        if state.global_step > 0 and self.tokens_trained == 0 and isinstance(saved, dict):
            attributes = saved.get("attributes", {})
            for name in self.COUNTS:
                if name in attributes:
                    setattr(self, name, attributes[name])
        self._step_started = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.train_seconds += _slowest_process(now - self._step_started, args.device)
        # Should a step's on_step_begin be skipped, its time still counts: from the previous step's end.
        self._step_started = now
        self.stopped_by_budget = self.budget_flops is not None and self.flops >= self.budget_flops
        self.stopped_by_time = self.budget_seconds is not None and self.train_seconds >= self.budget_seconds
        if self.stopped_by_budget or self.stopped_by_time:
            control.should_training_stop = True
        return control


def _slowest_process(seconds: float, device: torch.device) -> float:
    """The longest of the processes' `seconds` (a multi-process step ends when its slowest process does).
    Every process then adds the same time, so all of them stop at the same step: a process stopping
    alone would leave the others waiting for it forever."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return seconds
    longest = torch.tensor([seconds], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(longest, op=torch.distributed.ReduceOp.MAX)
    return float(longest.item())


class ComputeAccountingMixin:
    """For Trainer subclasses: counts through the run's `ComputeAccountant`, logs the totals, and leaves
    the model card to the end of the run (TRL writes one at every checkpoint)."""

    def accountant(self) -> ComputeAccountant:
        # Looked up each time: resuming may replace the callback object with a restored copy.
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, ComputeAccountant))

    def count(self, instances: int, trained_tokens: torch.Tensor | int,
              forward_only_tokens: torch.Tensor | int = 0) -> None:
        """Add one micro-batch's local counts (training instances, tokens), summed across processes."""
        local = torch.tensor([int(instances), int(trained_tokens), int(forward_only_tokens)],
                             device=self.accelerator.device)
        instances, trained, forward_only = self.accelerator.gather(local).reshape(-1, 3).sum(dim=0).tolist()
        self.accountant().add(trained, forward_only, instances)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        totals = self.accountant()
        logs = {**logs, "tokens_trained": totals.tokens_trained, "tokens_forward_only": totals.tokens_forward_only,
                "train_flops": float(totals.flops), "train_seconds": round(totals.train_seconds, 3)}
        super().log(logs, *args, **kwargs)

    def create_model_card(self, *args, **kwargs) -> None:
        """No card per checkpoint: the run writes one card, with the final model (`write_final_model`)."""


class CountingSFTTrainer(ComputeAccountingMixin, SFTTrainer):
    """`trl.SFTTrainer` that counts its tokens and FLOPs (6·N per non-padding token)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.model.training:
            self.count(inputs["attention_mask"].size(0), inputs["attention_mask"].sum())
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)


# ---- model, LoRA ---------------------------------------------------------------------------------

def lora_config(script_args: ScriptArguments, model: torch.nn.Module):
    """PEFT LoRA config, after checking every target names a module of `model` (PEFT's own error would
    come later, wrapped in a traceback)."""
    from peft import LoraConfig

    targets = script_args.lora_target_modules
    if targets != ["all-linear"]:
        names = [name for name, _ in model.named_modules()]
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            raise ValueError(f"--lora_target_modules: {', '.join(missing)} not found in {script_args.model_name_or_path} "
                             f"(its linear layers: {', '.join(sorted(_linear_module_names(model)))})")
    return LoraConfig(r=script_args.lora_r, lora_alpha=script_args.lora_alpha, lora_dropout=script_args.lora_dropout,
                      target_modules="all-linear" if targets == ["all-linear"] else list(targets),
                      task_type="CAUSAL_LM")


def _linear_module_names(model: torch.nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name}


def load_tokenizer(path: str, chat: bool):
    """The checkpoint's tokenizer, after checking `path` is a checkpoint at all (one-line ValueError)."""
    from transformers import AutoTokenizer

    load_checkpoint_or_die(path)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if chat and not tokenizer.chat_template:
        raise ValueError(f"{path}: the tokenizer has no chat template; train with --chat_template false")
    if not tokenizer.is_fast:
        raise ValueError(f"{path}: a fast tokenizer (tokenizer.json) is needed for character offsets")
    return tokenizer


def load_model(path: str):
    """float32 weights (mixed precision, --bf16, is the Trainer's business), quietly: a weight-loading
    progress bar would break the one-error-line promise of the CLI."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)


# ---- output directory, final model, model card ---------------------------------------------------------

def check_output_dir(output_dir: str) -> None:
    """Refuse an output folder that already holds a model: its files would be overwritten (an interrupted
    run of ours has none yet — config.json is written last but one)."""
    if (Path(output_dir) / "config.json").is_file():
        raise ValueError(f"{output_dir}: already holds a model (config.json); choose another --output_dir or "
                         f"remove it")


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest checkpoint-N folder whose trainer_state.json exists: the Trainer writes that file last,
    so a run killed while saving leaves a newer, incomplete folder that must not be resumed from."""
    out = Path(output_dir)
    if not out.is_dir():
        return None
    steps = [(int(p.name.split("-", 1)[1]), p) for p in out.glob("checkpoint-*")
             if p.name.split("-", 1)[1].isdigit() and (p / "trainer_state.json").is_file()]
    return str(max(steps)[1]) if steps else None


def resolve_resume(value: str | None, output_dir: str) -> str | None:
    """--resume_from_checkpoint: a checkpoint folder, or true/last for the newest complete one in output_dir."""
    if value is None or value.lower() in ("false", "no", "none", ""):
        return None
    if value.lower() in ("true", "last", "yes"):
        last = last_complete_checkpoint(output_dir)
        if last is None:
            raise ValueError(f"{output_dir}: no complete checkpoint-N folder to resume from")
        return last
    if not (Path(value) / "trainer_state.json").is_file():
        raise ValueError(f"{value}: not a complete Trainer checkpoint (no trainer_state.json)")
    return value


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def model_card(method: str, record: dict[str, Any]) -> str:
    """README.md for the final model: a readable summary and the full record as a JSON block."""
    compute, data = record["compute"], record["data"]
    eval_flag = " --apply_chat_template" if record["script_args"]["chat_template"] else ""
    lines = [
        "---",
        f"base_model: {record['script_args']['model_name_or_path']}",
        "library_name: transformers",
        f"tags: [reverse-needle, absencebench, trl, {method}]",
        "---",
        "",
        f"# {Path(record['training_args']['output_dir']).name}: {method} on AbsenceBench-style omission tasks",
        "",
        f"Trained with `python -m trainers.{method}` (Reverse Needle) from "
        f"`{record['script_args']['model_name_or_path']}`; {record['method_description']}",
        "",
        "| | |", "|---|---|",
        f"| method | {method} |",
        f"| optimizer steps | {record['global_step']} |",
        f"| training instances seen (repeats counted) | {compute['instances_trained']:,} |",
        f"| tokens trained (forward + backward) | {compute['tokens_trained']:,} |",
        f"| tokens forward-only | {compute['tokens_forward_only']:,} |",
        f"| training FLOPs (6·N·trained + 2·N·forward-only, N = {compute['n_params']:,}) | {compute['flops']:.4g} |",
        f"| training wall time (s in optimizer steps, summed over sessions) | {compute['train_seconds']:.1f} |",
        f"| FLOP budget (--compute_budget_flops) | {_budget(compute['budget_flops'], compute['stopped_by_budget'])} |",
        f"| time budget (--max_train_seconds) | {_budget(compute['budget_seconds'], compute['stopped_by_time'])} |",
        f"| stopped by | {' and '.join(compute['stopped_by']) or 'the step/epoch limit'} |",
        f"| seed / data seed | {record['seed']} / {record['data_seed']} |",
        f"| training file instances | {data['n_instances']} ({', '.join(data['domains'])}; {', '.join(data['variants'])}) |",
        f"| data sha256 ({DATA_NAME}) | `{data['sha256']}` |",
        "",
        "Evaluate with lm-eval:",
        "",
        f"    absence-lm-eval --tasks absencebench --model hf --model_args pretrained=<this dir>"
        f"{eval_flag}",
        "",
        "## Full record",
        "",
        "```json",
        json.dumps(record, indent=2, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(lines)


def _budget(value: float | None, reached: bool) -> str:
    return "none" if value is None else f"{value:g}{' (reached: stopped early)' if reached else ''}"


def read_model_card(directory: str | os.PathLike) -> dict[str, Any]:
    """The JSON record embedded in a model card written by `model_card`."""
    text = (Path(directory) / CARD_NAME).read_text(encoding="utf-8")
    return json.loads(text.split("```json\n", 1)[1].split("\n```", 1)[0])


def write_final_model(trainer, output_dir: str, card: str, instances: Sequence[Instance]) -> Path:
    """Save the trained model (LoRA merged) as a plain checkpoint into output_dir, beside the checkpoint-N
    folders: everything is written to a staging folder and moved in, config.json and the card last, so a
    run killed on the way never leaves a directory that loads as a finished model."""
    out = Path(output_dir)
    staging = out / f".final-partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    try:
        model.save_pretrained(staging, safe_serialization=True)
        trainer.processing_class.save_pretrained(staging)
        write_jsonl(staging / DATA_NAME, instances)
        trainer.state.save_to_json(str(staging / "trainer_state.json"))
        atomic_write_text(staging / CARD_NAME, card)
        names = sorted(p.name for p in staging.iterdir())
        for name in names:  # safetensors creates owner-only files; a model is ordinary data
            os.chmod(staging / name, default_file_mode())
        for name in [n for n in names if n not in FINAL_FILES_LAST] + list(FINAL_FILES_LAST):
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _end_of_turn_in_generation_config(model, tokenizer) -> None:
    """Generation must stop at the chat template's end-of-turn token, the one training taught."""
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN) if END_OF_TURN in tokenizer.get_vocab() else None
    if end_id is None:
        return
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if end_id not in eos:
        model.generation_config.eos_token_id = [end_id, *eos]


# ---- one run ---------------------------------------------------------------------------------------

@dataclass
class PreparedRun:
    """A validated run, ready to train: everything that can fail on bad input has been done."""
    method: str
    description: str
    script_args: ScriptArguments
    training_args: AbsenceSFTConfig
    instances: list[Instance]
    data_seed: int
    resume: str | None
    trainer: Any


def prepare(method: str, description: str, script_args: ScriptArguments, training_args: AbsenceSFTConfig,
            build_trainer: Callable[..., Any]) -> PreparedRun:
    """Check the output folder, checkpoint to resume from, model and data; build the method's Trainer with
    `build_trainer(model, tokenizer, instances, peft_config, accountant)`. Bad input raises a one-line
    ValueError / DataError, before any training."""
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    check_output_dir(training_args.output_dir)
    tokenizer = load_tokenizer(script_args.model_name_or_path, script_args.chat_template)
    data_seed = 0 if training_args.data_seed is None else training_args.data_seed
    instances = load_training_instances(script_args.domains, script_args.variants, script_args.n_train, data_seed,
                                        max_lines=script_args.max_lines, train_file=script_args.train_file)
    instances = drop_overlong(tokenizer, instances, script_args.chat_template, training_args.max_length)
    model = load_model(script_args.model_name_or_path)
    peft_config = lora_config(script_args, model) if script_args.use_peft else None
    _end_of_turn_in_generation_config(model, tokenizer)
    accountant = ComputeAccountant(matmul_parameter_count(model), script_args.compute_budget_flops,
                                   script_args.max_train_seconds)
    trainer = build_trainer(model, tokenizer, instances, peft_config, accountant)
    return PreparedRun(method, description, script_args, training_args, instances, data_seed, resume, trainer)


def train_and_save(run: PreparedRun) -> Path:
    """Train (or resume), then write the final model and its card. Returns the output folder."""
    started = time.time()
    trainer, training_args, script_args, instances = run.trainer, run.training_args, run.script_args, run.instances
    trainer.train(resume_from_checkpoint=run.resume)
    if trainer.accelerator.is_main_process:
        record = {
            "method": run.method,
            "method_description": run.description,
            "global_step": trainer.state.global_step,
            "max_steps": trainer.state.max_steps,
            "seed": training_args.seed,
            "data_seed": run.data_seed,
            "compute": trainer.accountant().summary(),
            "data": {"n_instances": len(instances), "sha256": data_sha256(instances),
                     "domains": sorted({i.domain for i in instances}),
                     "variants": sorted({i.variant for i in instances}),
                     "source": script_args.train_file or "generated train split"},
            "resumed_from": run.resume,
            "wall_seconds_last_session": round(time.time() - started, 1),
            "script_args": _json_safe(asdict(script_args)),
            "training_args": _json_safe(training_args.to_dict()),
            "versions": _versions(),
        }
        write_final_model(trainer, training_args.output_dir, model_card(run.method, record), instances)
    if hasattr(trainer, "end"):  # transformers >= 5.18: close trackers and the process group
        trainer.end()
    return Path(training_args.output_dir)


def _versions() -> dict[str, str]:
    import peft
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "peft": peft.__version__}


def _usage(method: str, config_class: type) -> str:
    own = "the model and data options (down to --max_train_seconds)"
    if config_class is not AbsenceSFTConfig:
        own += " and the contrastive ones (from --lambda_seq, at the end)"
    return (f"Train a model on AbsenceBench-style omission tasks ({method}) and save a plain checkpoint with a "
            f"model card in --output_dir. Any option can also come from a YAML file, `--config run.yaml` (keys "
            f"are the option names; options on the command line win). Reverse Needle's own options are {own}; "
            f"the rest are TRL's SFTConfig and transformers' TrainingArguments.")


def main_for(method: str, description: str, config_class: type,
             trainer_builder: Callable[[ScriptArguments, Any], Callable[..., Any]],
             argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (flags and/or --config YAML), prepare, train, save. Bad input — anything wrong before
    training starts — is one stderr line and exit code 2; errors during training keep their traceback."""
    try:
        parser = TrlParser((ScriptArguments, config_class), prog=f"python -m trainers.{method}",
                           description=_usage(method, config_class))
        script_args, training_args = parser.parse_args_and_config(args=None if argv is None else list(argv))
        prepared = prepare(method, description, script_args, training_args,
                           trainer_builder(script_args, training_args))
    except (ValueError, FileNotFoundError, DataError, yaml.YAMLError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    out = train_and_save(prepared)
    print(f"saved {out}", file=sys.stderr)
    return 0


# ---- the SFT method ----------------------------------------------------------------------------------

SFT_DESCRIPTION = ("supervised fine-tuning: causal-LM loss on the answer (the missing lines) and its "
                   "end-of-turn token, prompt tokens masked.")


def build_sft_trainer(script_args: ScriptArguments, training_args: AbsenceSFTConfig):
    def build(model, tokenizer, instances, peft_config, accountant):
        return CountingSFTTrainer(model=model, args=training_args, processing_class=tokenizer,
                                  train_dataset=sft_dataset(instances, script_args.chat_template),
                                  peft_config=peft_config, callbacks=[accountant])
    return build


def main(argv: Sequence[str] | None = None) -> int:
    return main_for("sft", SFT_DESCRIPTION, AbsenceSFTConfig, build_sft_trainer, argv)


if __name__ == "__main__":
    sys.exit(main())
