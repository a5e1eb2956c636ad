"""SFT baseline: `python -m trainers.sft [--config run.yaml] [--flags]`.

    python -m trainers.sft --max_train_seconds 1800 --output_dir runs/sft        # the recipe, 30 CPU-minutes
    python -m trainers.sft --n_train 8 --max_steps 4 --curve_instances_per_domain 0 --output_dir /tmp/sft

TRL's SFTTrainer on the prompt-completion pairs of `trainers.data` (loss on the answer and its end-of-turn
token only, computed at those positions alone), with the recipe and bookkeeping every trainer here shares
(`trainers.run.AbsenceTrainer`): precision measured at start-up, a learning-rate schedule over the budget,
a length curriculum, a learning curve, FLOP/time budgets, and a plain HF checkpoint with a model card.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from trainers.config import AbsenceSFTConfig, ScriptArguments
from trainers.data import sft_dataset
from trainers.run import AbsenceTrainer, main_for

SFT_DESCRIPTION = ("supervised fine-tuning: causal-LM loss on the answer (the missing lines) and its "
                   "end-of-turn token, prompt tokens masked.")


def build_sft_trainer(script_args: ScriptArguments, training_args: AbsenceSFTConfig):
    def build(model, tokenizer, instances, peft_config, **recipe):
        return AbsenceTrainer(model=model, args=training_args, processing_class=tokenizer,
                              train_dataset=sft_dataset(instances, script_args.chat_template, script_args.scratchpad),
                              peft_config=peft_config, **recipe)
    return build


def main(argv: Sequence[str] | None = None) -> int:
    return main_for("sft", SFT_DESCRIPTION, AbsenceSFTConfig, build_sft_trainer, argv)


if __name__ == "__main__":
    sys.exit(main())
