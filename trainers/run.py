"""What every trainer here shares: the Trainer base class with the project's recipe, model loading, the
output folder, and the run driver (`prepare`, `train_and_save`, `main_for`).

`AbsenceTrainer` is TRL's SFTTrainer with
* the loss computed only where there is a target (the answer and its end-of-turn token): the model is asked
  for those logits alone (`logits_to_keep`), so the prompt's thousands of tokens never go through the
  output projection, and no full-vocabulary entropy or accuracy is computed per step;
* compute accounting (`trainers.accounting`): tokens, FLOPs, optimizer-step seconds, FLOP/time budgets;
* with a budget, the learning-rate schedule over the budget (`trainers.recipe.budget_scheduler`);
* with `--curriculum`, the length curriculum's sampler (`trainers.recipe.CurriculumSampler`);
* the learning curve (`trainers.learning_curve`), and one model card at the end (`trainers.card`).
All but the loss and the curriculum sit in `RecipeMixin`, which the RL trainer (`trainers.rl`, on TRL's
GRPOTrainer) shares. Multi-GPU runs come from `accelerate launch` / `torchrun`, through the Trainer.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never try the hub

import torch
import yaml
from trl import SFTTrainer, TrlParser

from absence_tasks.models import END_OF_TURN, load_checkpoint_or_die
from absence_tasks.schema import DataError, Instance
from trainers.accounting import ComputeAccountant, matmul_parameter_count
from trainers.card import _json_safe, write_final_model
from trainers.config import AbsenceModelConfig, RecipeArguments, ScriptArguments
from trainers.data import data_sha256, drop_overlong, load_training_instances, visible_gaps_first
from trainers.learning_curve import LearningCurve, ScheduledEvaluation, validation_instances
from trainers.losses import next_token_targets, token_cross_entropy
from trainers.recipe import CurriculumSampler, budget_scheduler, choose_precision, measure_precision

# lr_scheduler_type -> (shape, the lr_scheduler_kwargs key of its floor) of the budget schedule
BUDGET_SCHEDULES = {"cosine": ("cosine", None), "cosine_with_min_lr": ("cosine", "min_lr_rate"),
                    "linear": ("linear", None), "constant": ("constant", None),
                    "constant_with_warmup": ("constant", None)}


# ---- the Trainer -----------------------------------------------------------------------------------

class RecipeMixin:
    """What every trainer here adds to its TRL trainer (put it first: `class T(RecipeMixin, SFTTrainer)`, and
    call `attach_callbacks()` at the end of `__init__`): compute accounting through the ComputeAccountant
    callback, the learning-rate schedule over a budget, the counts in every log, one model card per run
    (not per checkpoint), and what the run adds to the training record (`extra_record`)."""

    curriculum_stages: list[int] | None = None  # the length curriculum's stage per training row, when it is on

    def attach_callbacks(self) -> None:
        """The scheduled evaluations (learning curve, pass@k) measure this trainer's model and log through it."""
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, ScheduledEvaluation):
                callback.trainer = self

    def extra_record(self) -> dict[str, Any]:
        """Fields this method adds to the training record (none for the SFT trainers)."""
        return {}

    def save_side_files(self, folder: str | os.PathLike) -> None:
        """Files this method saves beside the model, in checkpoints and the final folder (none by default)."""

    def accountant(self) -> ComputeAccountant:
        # Looked up each time: resuming may replace the callback object with a restored copy.
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, ComputeAccountant))

    def progress(self) -> float:
        """How far the run is through its binding budget (or its step limit), 0..1."""
        return self.accountant().progress(self.state.global_step, self.state.max_steps)

    def count(self, instances: int, trained_tokens: torch.Tensor | int,
              forward_only_tokens: torch.Tensor | int = 0) -> None:
        """Add one micro-batch's local counts (training instances, tokens), summed across processes."""
        local = torch.tensor([int(instances), int(trained_tokens), int(forward_only_tokens)],
                             device=self.accelerator.device)
        instances, trained, forward_only = self.accelerator.gather(local).reshape(-1, 3).sum(dim=0).tolist()
        self.accountant().add(trained, forward_only, instances)

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        accountant = self.accountant()
        if self.lr_scheduler is not None or (accountant.budget_flops is None and accountant.budget_seconds is None):
            return super().create_scheduler(num_training_steps, optimizer)
        kind = self.args.lr_scheduler_type
        kind = getattr(kind, "value", kind)
        if kind not in BUDGET_SCHEDULES:
            raise ValueError(f"--lr_scheduler_type {kind} cannot follow a budget (use one of "
                             f"{', '.join(BUDGET_SCHEDULES)}, or give --max_steps instead of a budget)")
        shape, floor_key = BUDGET_SCHEDULES[kind]
        floor = float((self.args.lr_scheduler_kwargs or {}).get(floor_key, 0.0)) if floor_key else 0.0
        warmup = self.args.warmup_steps
        if warmup >= 1:
            raise ValueError(f"--warmup_steps {warmup:g} is a step count; under a budget give the warm-up as a "
                             f"fraction of the run (e.g. 0.03)")
        self.lr_scheduler = budget_scheduler(optimizer or self.optimizer, self.progress, warmup, shape, floor)
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        totals = self.accountant()
        logs = {**logs, "tokens_trained": totals.tokens_trained, "tokens_forward_only": totals.tokens_forward_only,
                "train_flops": float(totals.flops), "train_seconds": round(totals.train_seconds, 3)}
        super().log(logs, *args, **kwargs)

    def create_model_card(self, *args, **kwargs) -> None:
        """No card per checkpoint: the run writes one card, with the final model (`trainers.card`)."""


class AbsenceTrainer(RecipeMixin, SFTTrainer):
    """`trl.SFTTrainer` with the project's recipe (see the module docstring). `curriculum_stages` (one
    stage per training row, or None) switches the curriculum sampler on."""

    def __init__(self, *args, curriculum_stages: Sequence[int] | None = None, curriculum_ramp: float = 0.7,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.curriculum_stages = None if curriculum_stages is None else list(curriculum_stages)
        self.curriculum_ramp = curriculum_ramp
        self.attach_callbacks()

    def answer_forward(self, model, inputs: dict[str, torch.Tensor], labels: torch.Tensor,
                       num_items_in_batch=None, **model_kwargs) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """The model's outputs with logits only at the positions that predict a label, the loss there (the
        token-mean NLL SFTTrainer computes, on the same tokens), and its detached per-batch mean."""
        positions, targets = next_token_targets(labels)
        passed = {key: inputs[key] for key in ("input_ids", "attention_mask", "position_ids") if key in inputs}
        outputs = model(**passed, logits_to_keep=positions, **model_kwargs)
        loss = token_cross_entropy(outputs.logits, targets, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as SFTTrainer: DDP averages gradients across ranks
        return outputs, loss, token_cross_entropy(outputs.logits.detach(), targets)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs, loss, _ = self.answer_forward(model, inputs, inputs["labels"], num_items_in_batch, use_cache=False)
        if self.model.training:
            self.count(inputs["input_ids"].size(0), _real_tokens(inputs))
        return (loss, outputs) if return_outputs else loss

    def _get_train_sampler(self, train_dataset=None):
        if self.curriculum_stages is None:
            return super()._get_train_sampler(train_dataset)
        return CurriculumSampler(self.curriculum_stages, self.progress, seed=self.args.seed if self.args.data_seed is None else self.args.data_seed,
                                 ramp=self.curriculum_ramp)


def _real_tokens(inputs: dict[str, torch.Tensor]) -> int:
    """Non-padding tokens of a micro-batch (padding-free batches have no attention mask: all are real)."""
    mask = inputs.get("attention_mask")
    return int(inputs["input_ids"].numel() if mask is None else mask.sum())


# ---- model, LoRA, precision ---------------------------------------------------------------------------------

def lora_config(model_args: AbsenceModelConfig, model: torch.nn.Module):
    """TRL's `get_peft_config` (None without --use_peft), after checking every target names a module of
    `model` (PEFT's own error would come later, wrapped in a traceback)."""
    from trl import get_peft_config

    targets = model_args.lora_target_modules
    targets = [targets] if isinstance(targets, str) else list(targets or [])  # ModelConfig unwraps a single one
    if model_args.use_peft and targets != ["all-linear"]:
        names = [name for name, _ in model.named_modules()]
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            raise ValueError(f"--lora_target_modules: {', '.join(missing)} not found in {model_args.model_name_or_path} "
                             f"(its linear layers: {', '.join(sorted(_linear_module_names(model)))})")
    return get_peft_config(model_args)


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


def load_model(path: str, dtype: str = "float32", attn_implementation: str | None = None):
    """The checkpoint's weights in `dtype` (float32 by default: mixed precision, --bf16, is the Trainer's
    business), from local files only, quietly: a weight-loading progress bar would break the one-error-line
    promise of the CLI."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype if dtype == "auto" else getattr(torch, dtype),
                                                attn_implementation=attn_implementation, local_files_only=True)


def _end_of_turn_in_generation_config(model, tokenizer) -> None:
    """Generation must stop at the chat template's end-of-turn token, the one training taught."""
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN) if END_OF_TURN in tokenizer.get_vocab() else None
    if end_id is None:
        return
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if end_id not in eos:
        model.generation_config.eos_token_id = [end_id, *eos]



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


# ---- one run ---------------------------------------------------------------------------------------

@dataclass
class PreparedRun:
    """A validated run, ready to train: everything that can fail on bad input has been done."""
    method: str
    description: str
    model_args: AbsenceModelConfig
    script_args: ScriptArguments
    training_args: RecipeArguments
    instances: list[Instance]
    data_seed: int
    resume: str | None
    trainer: Any
    precision: dict[str, Any]


def settle_precision(training_args: RecipeArguments, model: torch.nn.Module) -> dict[str, Any]:
    """Decide fp32 or bf16 (autocast) for a CPU run — `--precision auto` measures both on this machine —
    and set the training arguments to it. On a GPU the Trainer's own --bf16/--fp16 stand. Returns what
    the model card records."""
    if torch.cuda.is_available() or training_args.fp16:
        chosen = "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32"
        return {"requested": training_args.precision, "chosen": chosen, "measured_tokens_per_s": None}
    rates = measure_precision(model) if training_args.precision == "auto" else None
    chosen = choose_precision(training_args.precision, rates)
    training_args.bf16 = chosen == "bf16"
    training_args.mixed_precision = "bf16" if training_args.bf16 else "no"
    if rates:
        print(f"precision: {chosen} (measured trained tokens/s: fp32 {rates['fp32']:.0f}, bf16 autocast "
              f"{rates['bf16']:.0f})", file=sys.stderr)
    return {"requested": training_args.precision, "chosen": chosen,
            "measured_tokens_per_s": None if rates is None else {k: round(v, 1) for k, v in rates.items()}}


def prepare(method: str, description: str, model_args: AbsenceModelConfig, script_args: ScriptArguments,
            training_args: RecipeArguments, build_trainer: Callable[..., Any]) -> PreparedRun:
    """Check the output folder, checkpoint to resume from, model and data; settle the precision; build the
    method's Trainer with `build_trainer(model, tokenizer, instances, peft_config, **recipe)`, where recipe
    holds the callbacks (accountant, learning curve) and the curriculum, to be passed on to the Trainer.
    Bad input raises a one-line ValueError / DataError, before any training."""
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    check_output_dir(training_args.output_dir)
    tokenizer = load_tokenizer(model_args.model_name_or_path, script_args.chat_template)
    data_seed = 0 if training_args.data_seed is None else training_args.data_seed
    instances = load_training_instances(script_args.domains, script_args.variants, script_args.n_train, data_seed,
                                        max_lines=script_args.document_lines(), train_file=script_args.train_file,
                                        curriculum=script_args.curriculum,
                                        curriculum_stages=script_args.curriculum_stages,
                                        curriculum_start_lines=script_args.curriculum_start_lines)
    instances = visible_gaps_first(instances, script_args.curriculum_placeholder_stages)
    instances = drop_overlong(tokenizer, instances, script_args.chat_template, training_args.max_length,
                              script_args.scratchpad)
    curve_instances = (validation_instances(script_args.domains, script_args.curve_instances_per_domain, data_seed)
                       if script_args.curve_instances_per_domain > 0 else [])
    model = load_model(model_args.model_name_or_path, model_args.dtype, model_args.attn_implementation)
    peft_config = lora_config(model_args, model)
    _end_of_turn_in_generation_config(model, tokenizer)
    precision = settle_precision(training_args, model)
    accountant = ComputeAccountant(matmul_parameter_count(model), script_args.compute_budget_flops,
                                   script_args.max_train_seconds)
    callbacks = [accountant]
    if curve_instances:
        callbacks.append(LearningCurve(curve_instances, tokenizer, script_args.chat_template,
                                       script_args.curve_every_steps, scratchpad=script_args.scratchpad))
    stages = [i.metadata.get("curriculum_stage") for i in instances]
    recipe = {"callbacks": callbacks, "curriculum_ramp": script_args.curriculum_ramp,
              "curriculum_stages": stages if script_args.curriculum and None not in stages else None}
    trainer = build_trainer(model, tokenizer, instances, peft_config, **recipe)
    return PreparedRun(method, description, model_args, script_args, training_args, instances, data_seed, resume, trainer,
                       precision)


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
            "precision": run.precision,
            "learning_curve": next((cb.points for cb in trainer.callback_handler.callbacks
                                    if isinstance(cb, LearningCurve)), []),
            "curriculum": run.trainer.curriculum_stages is not None,
            "data": {"n_instances": len(instances), "sha256": data_sha256(instances),
                     "domains": sorted({i.domain for i in instances}),
                     "variants": sorted({i.variant for i in instances}),
                     "source": script_args.train_file or "generated train split"},
            "resumed_from": run.resume,
            "wall_seconds_last_session": round(time.time() - started, 1),
            "model_args": _json_safe(asdict(run.model_args)),
            "script_args": _json_safe(asdict(script_args)),
            "training_args": _json_safe(training_args.to_dict()),
            "versions": _versions(),
            **trainer.extra_record(),
        }
        write_final_model(trainer, training_args.output_dir, record, instances)
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
    own = "the data and budget options (from --domains down to --max_train_seconds)"
    if method_options := getattr(config_class, "OWN_OPTIONS", None):
        own += f" and {method_options}"
    trl_config = next(c.__name__ for c in config_class.__mro__ if c.__module__.startswith("trl."))
    return (f"Train a model on AbsenceBench-style omission tasks ({method}) and save a plain checkpoint with a "
            f"model card in --output_dir. Any option can also come from a YAML file, `--config run.yaml` (keys "
            f"are the option names; options on the command line win). Reverse Needle's own options are {own}; "
            f"the model options before them are TRL's ModelConfig (with this project's defaults), the rest TRL's "
            f"{trl_config} and transformers' TrainingArguments.")


def main_for(method: str, description: str, config_class: type,
             trainer_builder: Callable[[ScriptArguments, Any], Callable[..., Any]],
             argv: Sequence[str] | None = None, script_class: type = ScriptArguments) -> int:
    """Parse `argv` (flags and/or --config YAML) into the model config, `script_class` and `config_class`,
    prepare, train, save.
    Bad input — anything wrong before training starts — is one stderr line and exit code 2; errors during
    training keep their traceback."""
    try:
        parser = TrlParser((AbsenceModelConfig, script_class, config_class), prog=f"python -m trainers.{method}",
                           description=_usage(method, config_class))
        model_args, script_args, training_args = parser.parse_args_and_config(
            args=None if argv is None else list(argv))
        prepared = prepare(method, description, model_args, script_args, training_args,
                           trainer_builder(script_args, training_args))
    except (ValueError, FileNotFoundError, DataError, yaml.YAMLError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    out = train_and_save(prepared)
    print(f"saved {out}", file=sys.stderr)
    return 0

