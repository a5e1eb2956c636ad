"""Training speed of the SFT and contrastive trainers on the real SmolLM2-135M (`python benchmarks/train_speed.py`).

In one process: the machine's matmul peak (torch.mm of large square matrices, float32 and bfloat16), then for
each precision and method a short run of the real trainer (same data, same batches) timing every optimizer
step after a warm-up. Reported per run: trained tokens/s, counted FLOP/s (6·N per trained token, 2·N per
forward-only token — the numbers the trainers log) and MFU = counted FLOP/s ÷ the matmul peak of that
precision; and the contrastive/SFT step-time ratio. Prints a Markdown table. Not run by the tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import TrainerCallback

from absence_tasks.models import DEFAULT_CHECKPOINT
from trainers.config import AbsenceSFTConfig, ContrastiveConfig, ScriptArguments
from trainers.contrastive import build_contrastive_trainer
from trainers.data import drop_overlong, load_training_instances
from trainers.sft import ComputeAccountant, build_sft_trainer, load_model, load_tokenizer, matmul_parameter_count


def matmul_peak(dtype: torch.dtype, size: int, reps: int) -> float:
    """FLOP/s of torch.mm on two size×size matrices (best of `reps`, after one warm-up)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


class StepTimer(TrainerCallback):
    """Wall time and counted tokens/FLOPs of every optimizer step."""

    def __init__(self, accountant: ComputeAccountant):
        self.accountant = accountant
        self.steps: list[tuple[float, int, int, int]] = []  # seconds, trained tokens, forward-only tokens, flops

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()
        self._before = (self.accountant.tokens_trained, self.accountant.tokens_forward_only, self.accountant.flops)

    def on_step_end(self, args, state, control, **kwargs):
        now = (self.accountant.tokens_trained, self.accountant.tokens_forward_only, self.accountant.flops)
        self.steps.append((time.perf_counter() - self._start, *(a - b for a, b in zip(now, self._before))))


# The runs: TRL's SFT; the contrastive trainer with both objectives off (its own SFT loss: logits only
# where there is a target, so it isolates the objectives' cost); the contrastive trainer as configured.
METHODS = {"sft": {}, "contrastive λ=0": {"lambda_seq": 0.0, "lambda_gap": 0.0}, "contrastive": {}}


def measure(method: str, script_args: ScriptArguments, bf16: bool, instances, warmup: int, steps: int,
            batch_size: int, workdir: str) -> dict:
    config_class = AbsenceSFTConfig if method == "sft" else ContrastiveConfig
    training_args = config_class(output_dir=workdir,
                                 max_steps=warmup + steps, per_device_train_batch_size=batch_size,
                                 gradient_accumulation_steps=1,
                                 save_strategy="no", logging_steps=10_000, report_to="none", bf16=bf16,
                                 use_cpu=not torch.cuda.is_available(), disable_tqdm=True, seed=0,
                                 **METHODS[method])
    model = load_model(script_args.model_name_or_path)
    tokenizer = load_tokenizer(script_args.model_name_or_path, script_args.chat_template)
    accountant = ComputeAccountant(matmul_parameter_count(model))
    build = (build_sft_trainer if method == "sft" else build_contrastive_trainer)(script_args, training_args)
    trainer = build(model, tokenizer, instances, None, accountant)
    timer = StepTimer(trainer.accountant())
    trainer.add_callback(timer)
    trainer.train()
    measured = timer.steps[warmup:]
    seconds = sum(s[0] for s in measured)
    return {"method": method, "precision": "bf16" if bf16 else "fp32", "n_params": accountant.n_params,
            "step_seconds": statistics.mean(s[0] for s in measured),
            "tokens_per_s": sum(s[1] for s in measured) / seconds,
            "forward_only_share": sum(s[2] for s in measured) / max(1, sum(s[1] for s in measured)),
            "flops_per_s": sum(s[3] for s in measured) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    parser.add_argument("--domains", nargs="+", default=["numerical", "poetry"])
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--matmul_size", type=int, default=2048)
    args = parser.parse_args()

    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
    precisions = {"fp32": [False], "bf16": [True], "both": [False, True]}[args.precision]
    # Another process briefly sharing the cores lowers a single measurement; the peak is the best of
    # several, taken before and after the training runs.
    def peak_now() -> dict[bool, float]:
        return {bf16: matmul_peak(torch.bfloat16 if bf16 else torch.float32, args.matmul_size, 10)
                for bf16 in precisions}
    peaks_before = peak_now()

    script_args = ScriptArguments(model_name_or_path=args.model, domains=args.domains,
                                  n_train=args.batch_size * (args.warmup + args.steps))
    tokenizer = load_tokenizer(args.model, True)
    instances = drop_overlong(tokenizer, load_training_instances(script_args.domains, script_args.variants,
                                                                 script_args.n_train, 0), True, 4096)
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for bf16 in precisions:
            for method in METHODS:
                results.append(measure(method, script_args, bf16, instances, args.warmup, args.steps,
                                       args.batch_size, workdir))
                print(f"done: {method} {'bf16' if bf16 else 'fp32'}", file=sys.stderr)

    peaks_after = peak_now()
    peaks = {bf16: max(peaks_before[bf16], peaks_after[bf16]) for bf16 in precisions}
    print("matmul peak GFLOP/s before/after: " + ", ".join(
        f"{'bf16' if bf16 else 'fp32'} {peaks_before[bf16] / 1e9:,.0f}/{peaks_after[bf16] / 1e9:,.0f}"
        for bf16 in precisions))
    print(f"\nModel {args.model} (N = {results[0]['n_params']:,} matmul parameters), batch {args.batch_size}, "
          f"{args.steps} timed steps after {args.warmup} warm-up, domains {' '.join(args.domains)}.\n")
    print("| precision | matmul peak GFLOP/s | method | s/step | trained tokens/s | forward-only tokens per "
          "trained token | counted GFLOP/s | MFU | step time vs SFT |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        peak = peaks[r["precision"] == "bf16"]
        sft = next(x for x in results if x["precision"] == r["precision"] and x["method"] == "sft")
        print(f"| {r['precision']} | {peak / 1e9:,.0f} | {r['method']} | {r['step_seconds']:.2f} | "
              f"{r['tokens_per_s']:,.0f} | {r['forward_only_share']:.2f} | {r['flops_per_s'] / 1e9:,.1f} | "
              f"{r['flops_per_s'] / peak:.1%} | {r['step_seconds'] / sft['step_seconds']:.2f}× |")


if __name__ == "__main__":
    main()
