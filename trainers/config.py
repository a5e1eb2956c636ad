"""Command-line configuration: TRL's `ModelConfig` (the model, LoRA) with this project's defaults
(`AbsenceModelConfig`), one dataclass of script arguments (data, compute and time budgets) shared by every method (`RLScriptArguments`: its defaults for the RL trainer), the recipe options every method shares
(`RecipeArguments`), and one training config per method — `AbsenceSFTConfig` (a `trl.SFTConfig`),
`ContrastiveConfig` (an `AbsenceSFTConfig` plus the contrastive knobs) and `RLConfig` (a `trl.GRPOConfig`).
`trl.TrlParser` turns them into command-line flags, and `--config file.yaml` sets any of them from a YAML file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from trl import GRPOConfig, ModelConfig, SFTConfig

from absence_tasks.models import DEFAULT_CHECKPOINT
from absence_tasks.schema import DOMAINS, VARIANTS
from trainers.data import DEFAULT_HARD_NEGATIVE_KINDS, HARD_NEGATIVE_KINDS, domain_curriculum_stages, generation_config
from trainers.losses import POOLING_MODES
from trainers.recipe import PRECISIONS
from trainers.rewards import RL_MODES

# The peak learning rate of the recipe (full fine-tuning of SmolLM2-135M): the best of 3e-5, 1e-4, 3e-4 and 1e-3
# at equal FLOPs on the validation split (results/lr-sweep-sft).
LEARNING_RATE = 1e-4

# Every linear layer of a Llama block; `--lora_target_modules all-linear` is PEFT's shorthand for the same.
LLAMA_LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class AbsenceModelConfig(ModelConfig):
    """`trl.ModelConfig` (`--model_name_or_path`, `--use_peft`, `--lora_*`, `--dtype`, ...; `trl.get_peft_config`
    builds the LoRA config from it) with this project's defaults: the embedded checkpoint, LoRA on every
    linear layer of a Llama block. Weights load in float32 by default; on CPU the recipe's --precision
    decides the compute precision (bf16 autocast or fp32)."""

    model_name_or_path: str | None = field(
        default=str(DEFAULT_CHECKPOINT),
        metadata={"help": "A local Hugging Face checkpoint directory (`absence-bench prepare-model` makes the "
                          "default)."})
    lora_target_modules: list[str] | None = field(
        default_factory=lambda: list(LLAMA_LINEAR_MODULES),
        metadata={"help": "Module names to adapt (suffixes of the model's module names), or 'all-linear'."})

    def __post_init__(self) -> None:
        if not self.model_name_or_path:
            raise ValueError("--model_name_or_path is empty: give a local checkpoint directory")
        if self.use_peft and (self.lora_r < 1 or self.lora_alpha < 1):
            raise ValueError("--lora_r and --lora_alpha must be >= 1")
        if self.load_in_8bit or self.load_in_4bit:
            raise ValueError("--load_in_8bit / --load_in_4bit (bitsandbytes quantisation) are not supported here: "
                             "a 135M model trains in full precision on CPU")
        super().__post_init__()


@dataclass
class ScriptArguments:
    """What to train on (data) and how much (compute and time budgets); the model is `AbsenceModelConfig`'s,
    the method's config says how."""

    domains: list[str] = field(
        default_factory=lambda: list(DOMAINS),
        metadata={"help": f"Task domains to train on ({', '.join(DOMAINS)})."})
    variants: list[str] = field(
        default_factory=lambda: ["omission"],
        metadata={"help": f"Task variants to train on ({', '.join(VARIANTS)})."})
    n_train: int = field(
        default=200,
        metadata={"help": "Generated training instances per domain and variant (train split, whose sources are "
                          "disjoint from the test split's). The generator is seeded by --data_seed (default 0)."})
    max_lines: int | None = field(
        default=None,
        metadata={"help": "Cap the length of generated documents (lines); default: the generator's CPU preset."})
    train_file: str | None = field(
        default=None,
        metadata={"help": "Train on this instances JSONL (`absence-bench generate --split train`) instead of "
                          "generating; --domains/--variants select from it."})
    curriculum: bool = field(
        default=True,
        metadata={"help": "Generate the train split as a length curriculum (documents of a few lines first, the "
                          "test suite's lengths last; see trainers/recipe.py) and draw it in that order as the run "
                          "progresses through its budget; false: one stage at the preset's lengths, drawn at random "
                          "(the data of runs before the curriculum existed)."})
    curriculum_stages: int = field(
        default=4, metadata={"help": "Length stages of the curriculum; --n_train is shared out over them."})
    curriculum_start_lines: int = field(
        default=4, metadata={"help": "Lines (numbers, poem lines, diff lines) of the curriculum's shortest "
                                     "documents."})
    curriculum_ramp: float = field(
        default=0.7, metadata={"help": "Fraction of the run (of its budget, or of its steps) after which the last, "
                                       "full-length stage is open."})
    curriculum_placeholder_stages: int = field(
        default=0, metadata={"help": "Visible gaps first: the curriculum's first this many length stages are trained "
                                     "as placeholder instances (each missing line marked '<missing line>' where it "
                                     "was, so attention has a key at the gap), the later ones as omission instances, "
                                     "whose gaps the model must find itself (0: off)."})
    curve_every_steps: int = field(
        default=50, metadata={"help": "Learning curve: greedy F1 on the fixed validation set every this many "
                                      "optimizer steps (0: only at the end); its time is not training time."})
    curve_instances_per_domain: int = field(
        default=10, metadata={"help": "Validation instances per domain for the learning curve (0: no curve)."})
    chat_template: bool = field(
        default=True,
        metadata={"help": "Wrap prompt and answer in the tokenizer's chat template (user = prompt, assistant = "
                          "answer), as lm-eval's --apply_chat_template does; false: raw prompt + answer + EOS."})
    scratchpad: bool = field(
        default=False,
        metadata={"help": "Train the answer after a walk through the original inside <think>…</think> (each line's "
                          "first characters, then 'present' or 'MISSING'; absence_tasks.prompts.render_scratchpad), "
                          "which the scorer strips. Evaluate such a model with --metadata '{\"scratchpad\": true}' "
                          "so its generation budgets include the walk."})
    compute_budget_flops: float | None = field(
        default=None,
        metadata={"help": "Stop once the counted training FLOPs (6·N per trained token, 2·N per forward-only "
                          "token) reach this; the same budget gives SFT and contrastive equal compute."})
    max_train_seconds: float | None = field(
        default=None,
        metadata={"help": "Stop once the wall time spent in optimizer steps (forward, backward, update; not "
                          "start-up or checkpoint saving) reaches this many seconds, summed over the sessions of a "
                          "resumed run. Whichever of this and --compute_budget_flops is reached first stops it."})

    def __post_init__(self) -> None:
        if bad := [d for d in self.domains if d not in DOMAINS]:
            raise ValueError(f"unknown domain {bad[0]!r} (expected one of {', '.join(DOMAINS)})")
        if bad := [v for v in self.variants if v not in VARIANTS]:
            raise ValueError(f"unknown variant {bad[0]!r} (expected one of {', '.join(VARIANTS)})")
        if not self.domains or not self.variants:
            raise ValueError("--domains and --variants need at least one value each")
        if self.n_train < 1:
            raise ValueError(f"--n_train must be >= 1, got {self.n_train}: nothing to train on")
        if self.max_lines is not None and self.max_lines < 2:
            raise ValueError(f"--max_lines must be >= 2, got {self.max_lines}")
        if self.compute_budget_flops is not None and self.compute_budget_flops <= 0:
            raise ValueError(f"--compute_budget_flops must be > 0, got {self.compute_budget_flops}")
        if self.max_train_seconds is not None and self.max_train_seconds <= 0:
            raise ValueError(f"--max_train_seconds must be > 0, got {self.max_train_seconds}")
        if self.curriculum_stages < 1 or self.curriculum_start_lines < 2:
            raise ValueError("--curriculum_stages must be >= 1 and --curriculum_start_lines >= 2")
        if self.curriculum_placeholder_stages < 0:
            raise ValueError(f"--curriculum_placeholder_stages must be >= 0, got {self.curriculum_placeholder_stages}")
        if not 0 < self.curriculum_ramp <= 1:
            raise ValueError(f"--curriculum_ramp must lie in (0, 1], got {self.curriculum_ramp}")
        if self.curve_every_steps < 0 or self.curve_instances_per_domain < 0:
            raise ValueError("--curve_every_steps and --curve_instances_per_domain must be >= 0")

    def document_lines(self) -> int | dict[str, int] | None:
        """The cap on generated documents' lines (`trainers.data.load_training_instances`'s `max_lines`)."""
        return self.max_lines


@dataclass
class RecipeArguments:
    """The training recipe's options every method's config shares (a mixin: put it before the TRL config it
    completes, e.g. `class AbsenceSFTConfig(RecipeArguments, SFTConfig)`), and their CPU handling."""

    # Recomputing activations costs a third more compute; a 135M model's activations fit easily, and the
    # contrastive trainer reuses the forward pass's key/value cache, which checkpointing turns off.
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in the backward pass to save memory."})
    max_length: int | None = field(
        default=4096,
        metadata={"help": "Longest tokenised example; longer instances are left out of training (never cut: a "
                          "truncated answer would teach the model to stop early)."})
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "Resume an interrupted run: a checkpoint-N folder, or `last` for the newest complete one "
                          "in --output_dir. Token, FLOP and training-time counts continue from the checkpoint."})
    data_seed: int | None = field(
        default=None,
        metadata={"help": "Seed of the generated training data (default 0) and of the Trainer's data sampler "
                          "(default: --seed)."})
    lr_scheduler_type: str = field(
        default="cosine", metadata={"help": "Learning-rate decay after the warm-up. With a FLOP or time budget it "
                                            "runs over the budget (cosine, linear, constant, cosine_with_min_lr), "
                                            "else over the steps (any of transformers' schedulers)."})
    warmup_steps: float = field(
        default=0.03, metadata={"help": "Warm-up: a fraction of the run (< 1), or a step count without a budget."})
    precision: str = field(
        default="auto", metadata={"help": "On CPU: fp32, bf16 (autocast), or auto — measure both on this machine "
                                          "at start-up (a few seconds) and train in the faster one. On a GPU "
                                          "the Trainer's --bf16 / --fp16 decide.",
                                  "choices": list(PRECISIONS)})

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown --precision {self.precision!r} (expected one of {', '.join(PRECISIONS)})")
        # TRL turns bf16 on unless told otherwise, which transformers refuses on a machine without a GPU
        # unless use_cpu is set. There --precision decides (an explicit --bf16 true means bf16); the
        # run's start-up settles `auto` by measurement (trainers.run.settle_precision).
        if not torch.cuda.is_available():
            if self.bf16:
                self.precision = "bf16"
            self.bf16 = self.precision == "bf16" and not self.fp16
            self.use_cpu = True
            self.dataloader_pin_memory = False  # pinned memory only helps copies to a GPU
        super().__post_init__()


@dataclass
class AbsenceSFTConfig(RecipeArguments, SFTConfig):
    """`trl.SFTConfig` with defaults for this project: a 135M model trained on CPU or one GPU."""

    output_dir: str | None = field(default="runs/sft", metadata={"help": "Checkpoints and the final model."})
    learning_rate: float = field(default=LEARNING_RATE, metadata={"help": "Peak AdamW learning rate."})
    # A CPU hour is a few hundred documents: one instance per micro-batch (no padding, so no FLOPs spent on
    # it) and per optimizer step. Two per step made 194 updates in 30 minutes (results/recipe-sft-30m); one
    # makes twice as many, where batches of 8 made a handful.
    per_device_train_batch_size: int = field(default=1, metadata={"help": "Instances per device per micro-batch."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Micro-batches accumulated per optimizer step."})


@dataclass
class ContrastiveConfig(AbsenceSFTConfig):
    """The SFT loss plus the two "attend to absence" objectives (see trainers/contrastive.py)."""

    OWN_OPTIONS = "the contrastive ones (from --lambda_seq, at the end)"

    output_dir: str | None = field(default="runs/contrastive", metadata={"help": "Checkpoints and the final model."})
    lambda_seq: float = field(
        default=0.1, metadata={"help": "Weight of the sequence-level InfoNCE loss (0 switches it off)."})
    lambda_gap: float = field(
        default=0.1, metadata={"help": "Weight of the gap-level alignment loss (0 switches it off)."})
    lambda_probe: float = field(
        default=0.0, metadata={"help": "Weight of the direct gap signal: a linear probe on the --contrastive_layer "
                                       "states at the first token of each edited-copy line predicts whether lines "
                                       "are missing right before it (class-balanced binary cross-entropy), trained "
                                       "jointly and saved beside the model as gap_probe/gap_probe.safetensors (0: off)."})
    temperature: float = field(default=0.1, metadata={"help": "InfoNCE temperature."})
    contrastive_layer: int = field(
        default=-1, metadata={"help": "Hidden layer whose states the contrastive losses use (-1: the last, "
                                      "after the final norm; 0: the embeddings)."})
    pooling: str = field(default="mean", metadata={"help": "How a document span becomes one vector.",
                                                   "choices": list(POOLING_MODES)})
    gap_margin: float = field(
        default=0.5, metadata={"help": "The token after a gap is pushed until its cosine similarity with its "
                                       "counterpart in the complete document is at most this."})
    hard_negatives: bool = field(
        default=True, metadata={"help": "Add the --hard_negative_kinds edits of each instance as InfoNCE negatives "
                                        "(used only when --lambda_seq > 0)."})
    hard_negative_kinds: list[str] = field(
        default_factory=lambda: list(DEFAULT_HARD_NEGATIVE_KINDS),
        metadata={"help": "Which hard negatives to build per instance: shortest_line (only the shortest omittable "
                          "line edited), adjacent_pair (only the two adjacent omittable lines with the shortest "
                          "combined length edited; none for needle instances or documents without such a pair), "
                          "repeated_line (one line dropped from the middle of the most frequent run of "
                          "near-identical lines: refrains, closing brackets; none without a repeated line), "
                          "changed_line (nothing missing, the shortest line shortened by a word or a character). "
                          "Each one costs an extra forward-only pass, counted in the FLOPs: with "
                          "--share_prefix_cache (it starts at the first edit) 8 to 13 percent of the training "
                          "pass's FLOPs on the default data.",
                  "choices": list(HARD_NEGATIVE_KINDS)})
    mochi_mixed: int = field(
        default=0, metadata={"help": "Hard-negative mixing (MoCHi, Kalantidis et al. 2020), s: per instance, this many "
                                     "synthetic negatives, each a normalised convex mix of two of its --mochi_hardest "
                                     "hardest negatives (no gradient through them; 0: off)."})
    mochi_anchor_mixed: int = field(
        default=0, metadata={"help": "MoCHi's s': this many harder synthetic negatives, each the anchor mixed into "
                                     "one of the hardest negatives with a weight below 0.5 (0: off)."})
    mochi_hardest: int = field(
        default=3, metadata={"help": "MoCHi's N: how many of an instance's negatives, ranked by similarity to the "
                                     "anchor, the synthetic ones are mixed from."})
    in_batch_negatives: bool = field(
        default=True, metadata={"help": "Other instances' copies are negatives too."})
    share_prefix_cache: bool = field(
        default=True, metadata={"help": "Run the extra (complete / hard-negative) passes only from where their "
                                        "tokens differ from the training sequence, on its key/value cache."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lambda_seq < 0 or self.lambda_gap < 0 or self.lambda_probe < 0:
            raise ValueError("--lambda_seq, --lambda_gap and --lambda_probe must be >= 0")
        if self.temperature <= 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}")
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"unknown --pooling {self.pooling!r} (expected one of {', '.join(POOLING_MODES)})")
        if not -1 <= self.gap_margin <= 1:
            raise ValueError(f"--gap_margin is a cosine similarity, between -1 and 1; got {self.gap_margin}")
        if bad := [k for k in self.hard_negative_kinds if k not in HARD_NEGATIVE_KINDS]:
            raise ValueError(f"unknown --hard_negative_kinds {bad[0]!r} (expected {', '.join(HARD_NEGATIVE_KINDS)})")
        if min(self.mochi_mixed, self.mochi_anchor_mixed) < 0 or self.mochi_hardest < 1:
            raise ValueError("--mochi_mixed and --mochi_anchor_mixed must be >= 0 and --mochi_hardest >= 1")


# ---- reinforcement (trainers.rl) ---------------------------------------------------------------------------

# Peak learning rate of the RL trainer: a tenth of SFT's, since every sampled token of a wrong answer is pushed
# down at once. Not swept: no SmolLM2 RL run has been made yet.
RL_LEARNING_RATE = 1e-5


@dataclass
class RLScriptArguments(ScriptArguments):
    """ScriptArguments for `trainers.rl`: short documents by default, and no length curriculum (TRL's sampler
    draws the instances at random, each as a group of --num_generations samples)."""

    curriculum: bool = field(
        default=False,
        metadata={"help": "Must stay false for trainers.rl: TRL's GRPO sampler draws the instances at random, so a "
                          "curriculum's order would be lost; the documents are short instead (see --max_lines)."})
    max_lines: int | None = field(
        default=None,
        metadata={"help": "Cap the length of generated documents (lines). Default for RL: the length curriculum's "
                          "first stage per domain (SFT's recipe starts there): numerical and poetry up to 8 lines, PR "
                          "diffs up to 33 (from --curriculum_start_lines and --curriculum_stages)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.curriculum:
            raise ValueError("--curriculum true is not supported by trainers.rl (TRL's GRPO sampler draws instances "
                             "at random); its documents are short instead (--max_lines)")

    def document_lines(self) -> int | dict[str, int] | None:
        if self.max_lines is not None or self.train_file is not None:
            return self.max_lines
        return {domain: domain_curriculum_stages(domain, generation_config(domain, None), self.curriculum_stages,
                                                 self.curriculum_start_lines)[0].max_lines for domain in self.domains}


@dataclass
class RLConfig(RecipeArguments, GRPOConfig):
    """`trl.GRPOConfig` with the recipe's options and the three advantage modes of `trainers.rewards`."""

    OWN_OPTIONS = "the reinforcement ones (from --rl_mode, at the end)"

    output_dir: str | None = field(default="runs/rl", metadata={"help": "Checkpoints and the final model."})
    learning_rate: float = field(default=RL_LEARNING_RATE, metadata={"help": "Peak AdamW learning rate."})
    # One instance per optimizer step, as the SFT recipe: its group of --num_generations samples.
    per_device_train_batch_size: int = field(
        default=4, metadata={"help": "Sampled answers per device per micro-batch; a multiple of --num_generations "
                                     "(each instance's group of samples), so the default trains one instance per "
                                     "optimizer step."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Micro-batches accumulated per optimizer step."})
    num_generations: int | None = field(
        default=4, metadata={"help": "Answers sampled per instance (at --temperature, default 1.0): the group whose "
                                     "rewards the advantages compare."})
    max_completion_length: int | None = field(
        default=128, metadata={"help": "Longest sampled answer, in tokens (the default short documents' answers take "
                                       "a few to about 60)."})
    # Zhu et al. 2025 (The Surprising Effectiveness of Negative Reinforcement in LLM Reasoning): training on the
    # positive samples alone (PSR) raised pass@1 but narrowed the model (pass@k fell at large k), the negative
    # ones alone (NSR) kept its diversity, and W-REINFORCE — negative samples at full weight, positive ones at
    # lambda = 0.1 — matched or beat PPO and GRPO over the whole pass@k range on MATH and AIME. Hence the default.
    rl_mode: str = field(
        default="w_reinforce",
        metadata={"help": "Advantages from a group's rewards (trainers/rewards.py): grpo, (F1 - group mean) / (group "
                          "std + 1e-4), TRL's own formula (--scale_rewards is not read); nsr, -1 for every sample "
                          "that is not correct (F1 < --pass_threshold), 0 for the others; w_reinforce, nsr plus "
                          "+--positive_weight for the correct ones.",
                  "choices": list(RL_MODES)})
    positive_weight: float = field(
        default=0.1, metadata={"help": "W-REINFORCE's lambda: the advantage of a correct sample (a wrong one gets "
                                       "-1)."})
    pass_threshold: float = field(
        default=1.0, metadata={"help": "A sample is correct (passes) when its F1 is at least this: 1.0, the default, "
                                       "means exactly the missing lines. Used by nsr, w_reinforce and pass@k."})
    pass_at_k_instances_per_domain: int = field(
        default=5, metadata={"help": "pass@k of the starting model and the final one on this many validation "
                                     "instances per domain (0: not measured); not counted as training time."})
    pass_at_k_samples: int = field(
        default=8, metadata={"help": "Answers sampled per validation instance for pass@k (temperature 1, the "
                                     "task's own prompt, budget and stop); k = 1, 4, 8 up to this many."})

    def __post_init__(self) -> None:
        if self.rl_mode not in RL_MODES:
            raise ValueError(f"unknown --rl_mode {self.rl_mode!r} (expected one of {', '.join(RL_MODES)})")
        if self.positive_weight < 0:
            raise ValueError(f"--positive_weight must be >= 0, got {self.positive_weight}")
        if not 0 < self.pass_threshold <= 1:
            raise ValueError(f"--pass_threshold is an F1, in (0, 1]; got {self.pass_threshold}")
        if self.pass_at_k_instances_per_domain < 0 or self.pass_at_k_samples < 1:
            raise ValueError("--pass_at_k_instances_per_domain must be >= 0 and --pass_at_k_samples >= 1")
        if self.use_vllm and self.vllm_mode == "colocate" and not torch.cuda.is_available():
            # Tried with vLLM 0.32 (CPU) and TRL 1.16, also with --vllm_model_impl transformers: the engine starts,
            # then TRL's first weight sync fails (99 s into the run) inside vLLM's loader, as in vllm-project/vllm#34201.
            raise ValueError("--use_vllm with --vllm_mode colocate does not work on vLLM's CPU backend (its first "
                             "weight sync fails: 'Parameter' object has no attribute 'weight_loader'); leave "
                             "--use_vllm off to sample with transformers' generate")
        super().__post_init__()
