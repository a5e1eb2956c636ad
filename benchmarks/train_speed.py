"""Training speed of the trainers against a bare PyTorch loop, on the real SmolLM2-135M
(`python benchmarks/train_speed.py`; about 15 minutes on 2 cores; not run by the tests).

In one process: the machine's matmul peak (torch.mm of large square matrices, float32 and bfloat16, best of
several before and after), then for each precision (fp32; bf16 autocast) and each document-length bucket
(`short`: the curriculum's first stage; `full`: the test suite's lengths) the same instances, one per
micro-batch and two per optimizer step (the recipe's defaults), trained by

* `bare`: a plain loop — forward with logits only at the answer positions, cross entropy, backward, AdamW
  every two micro-batches — the reference nothing framework-shaped can beat by much;
* `sft`: `python -m trainers.sft`'s Trainer;
* `contrastive (terms off)`: the contrastive trainer with lambda_seq = lambda_gap = 0 (the cost of its
  machinery alone);
* `contrastive`: as configured by default (both terms, hard negatives; its forward-only passes are counted).

Every timed optimizer step after a warm-up counts: trained tokens/s, counted FLOP/s (6·N per trained
token, 2·N per forward-only token — the trainers' own accounting) and MFU = counted FLOP/s ÷ that
precision's matmul peak. Writes benchmarks/results/train_speed.json (with `sft_over_bare` and
`contrastive_off_over_sft` per precision and bucket, and which precision is faster here) and prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import TrainerCallback

from absence_tasks.generate import default_config
from absence_tasks.io import atomic_write_text
from absence_tasks.models import DEFAULT_CHECKPOINT, prepare_embedded_model
from trainers.accounting import ComputeAccountant, matmul_parameter_count
from trainers.config import AbsenceSFTConfig, ContrastiveConfig, ScriptArguments
from trainers.contrastive import build_contrastive_trainer
from trainers.data import curriculum_instances, drop_overlong, encode, load_training_instances
from trainers.losses import next_token_targets, step_flops, token_cross_entropy
from trainers.run import load_model, load_tokenizer
from trainers.sft import build_sft_trainer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "train_speed.json"
DOMAINS = ("numerical", "poetry", "github_prs")
ACCUMULATION = 2  # micro-batches of one instance per optimizer step, as the recipe's defaults


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


def bucket_instances(bucket: str, per_domain: int):
    """The instances of a length bucket: `short`, the curriculum's first stage; `full`, the preset's lengths."""
    if bucket == "full":
        return load_training_instances(DOMAINS, ["omission"], per_domain, 0)
    # Four stages of per_domain instances each; the first per_domain are stage 0's.
    return [instance for domain in DOMAINS
            for instance in curriculum_instances(domain, "omission", 4 * per_domain, 0, default_config(domain), 4,
                                                 4)[:per_domain]]


class StepTimer(TrainerCallback):
    """Wall time and counted tokens/FLOPs of every optimizer step of a Trainer."""

    def __init__(self, accountant: ComputeAccountant):
        self.accountant = accountant
        self.steps: list[tuple[float, int, int]] = []  # seconds, trained tokens, flops

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()
        self._before = (self.accountant.tokens_trained, self.accountant.flops)

    def on_step_end(self, args, state, control, **kwargs):
        now = (self.accountant.tokens_trained, self.accountant.flops)
        self.steps.append((time.perf_counter() - self._start, *(a - b for a, b in zip(now, self._before))))


def bare_loop(model_path: str, tokenizer, instances, bf16: bool, warmup: int) -> list[tuple[float, int, int]]:
    """The reference: the same instances in the same order, one per micro-batch, AdamW every ACCUMULATION."""
    model = load_model(model_path)
    model.train()
    n_params = matmul_parameter_count(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    rows = [encode(tokenizer, instance, chat=True) for instance in instances]
    context = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext
    steps = []
    for first in range(0, len(rows) - ACCUMULATION + 1, ACCUMULATION):
        started, tokens = time.perf_counter(), 0
        for row in rows[first:first + ACCUMULATION]:
            input_ids, labels = torch.tensor([row.input_ids]), torch.tensor([row.labels])
            positions, targets = next_token_targets(labels)
            with context():
                logits = model(input_ids=input_ids, logits_to_keep=positions, use_cache=False).logits
            (token_cross_entropy(logits, targets) / ACCUMULATION).backward()
            tokens += input_ids.numel()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps.append((time.perf_counter() - started, tokens, step_flops(n_params, tokens)))
    return steps[warmup:]


def trainer_loop(method: str, model_path: str, instances, bf16: bool, warmup: int, workdir: str):
    config_class, extra = {"sft": (AbsenceSFTConfig, {}),
                           "contrastive (terms off)": (ContrastiveConfig, {"lambda_seq": 0.0, "lambda_gap": 0.0}),
                           "contrastive": (ContrastiveConfig, {})}[method]
    training_args = config_class(output_dir=workdir, max_steps=len(instances) // ACCUMULATION,
                                 per_device_train_batch_size=1, gradient_accumulation_steps=ACCUMULATION,
                                 save_strategy="no", logging_steps=10_000, report_to="none",
                                 precision="bf16" if bf16 else "fp32", disable_tqdm=True, seed=0, **extra)
    script_args = ScriptArguments(model_name_or_path=model_path, curriculum=False, curve_instances_per_domain=0)
    model = load_model(model_path)
    tokenizer = load_tokenizer(model_path, True)
    accountant = ComputeAccountant(matmul_parameter_count(model))
    build = (build_sft_trainer if method == "sft" else build_contrastive_trainer)(script_args, training_args)
    trainer = build(model, tokenizer, instances, None, callbacks=[accountant])
    # Same order as the bare loop: the instances as given (no shuffling).
    trainer._get_train_sampler = lambda *args: torch.utils.data.SequentialSampler(trainer.train_dataset)
    timer = StepTimer(trainer.accountant())
    trainer.add_callback(timer)
    trainer.train()
    return timer.steps[warmup:]


def summary(steps: list[tuple[float, int, int]], peak: float) -> dict:
    seconds = sum(s[0] for s in steps)
    flops_per_s = sum(s[2] for s in steps) / seconds
    return {"steps": len(steps), "step_seconds": round(seconds / len(steps), 3),
            "tokens_per_s": round(sum(s[1] for s in steps) / seconds, 1),
            "flops_per_s": round(flops_per_s), "mfu": round(flops_per_s / peak, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None,
                        help="a checkpoint (default: the embedded SmolLM2, converted once into checkpoints/)")
    parser.add_argument("--per_domain", type=int, default=6, help="instances per domain and bucket")
    parser.add_argument("--warmup", type=int, default=2, help="optimizer steps not timed, per run")
    parser.add_argument("--matmul_size", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.model is None:
        args.model = str(prepare_embedded_model(ROOT / DEFAULT_CHECKPOINT))

    started = time.time()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks_before = {name: matmul_peak(dtype, args.matmul_size, 10) for name, dtype in dtypes.items()}
    tokenizer = load_tokenizer(args.model, True)
    methods = ("bare", "sft", "contrastive (terms off)", "contrastive")
    runs = []
    with tempfile.TemporaryDirectory() as workdir:
        for bucket in ("short", "full"):
            instances = drop_overlong(tokenizer, bucket_instances(bucket, args.per_domain), True, 4096)
            # Interleave the domains so every step mixes lengths as training does.
            instances = [i for group in zip(*(
                [x for x in instances if x.domain == d] for d in DOMAINS)) for i in group]
            mean_tokens = sum(len(encode(tokenizer, i, True).input_ids) for i in instances) / len(instances)
            for precision in dtypes:
                for method in methods:
                    bf16 = precision == "bf16"
                    steps = (bare_loop(args.model, tokenizer, instances, bf16, args.warmup) if method == "bare"
                             else trainer_loop(method, args.model, instances, bf16, args.warmup, workdir))
                    runs.append({"bucket": bucket, "mean_tokens": round(mean_tokens), "precision": precision,
                                 "method": method, "steps_raw": steps})
                    print(f"done: {bucket} {precision} {method}", file=sys.stderr)
    peaks_after = {name: matmul_peak(dtype, args.matmul_size, 10) for name, dtype in dtypes.items()}
    peaks = {name: max(peaks_before[name], peaks_after[name]) for name in dtypes}
    for run in runs:
        run.update(summary(run.pop("steps_raw"), peaks[run["precision"]]))

    def rate(bucket, precision, method):
        return next(r["tokens_per_s"] for r in runs
                    if (r["bucket"], r["precision"], r["method"]) == (bucket, precision, method))

    ratios = []
    for bucket in ("short", "full"):
        best = max(dtypes, key=lambda p: rate(bucket, p, "bare"))
        for precision in dtypes:
            ratios.append({"bucket": bucket, "precision": precision, "faster_precision_here": best,
                           "sft_over_bare": round(rate(bucket, precision, "sft") / rate(bucket, precision, "bare"), 3),
                           "sft_over_best_bare": round(rate(bucket, precision, "sft") / rate(bucket, best, "bare"), 3),
                           "contrastive_off_over_sft": round(rate(bucket, precision, "contrastive (terms off)")
                                                             / rate(bucket, precision, "sft"), 3)})
    result = {"command": "python benchmarks/train_speed.py " + " ".join(sys.argv[1:]),
              "machine": {"processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__},
              "matmul_peak_flops": {k: round(v) for k, v in peaks.items()},
              "matmul_peak_before_after": {k: [round(peaks_before[k]), round(peaks_after[k])] for k in dtypes},
              "accumulation": ACCUMULATION, "runs": runs, "ratios": ratios,
              "wall_seconds": round(time.time() - started, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")

    print(f"matmul peak GFLOP/s: fp32 {peaks['fp32'] / 1e9:,.0f}, bf16 {peaks['bf16'] / 1e9:,.0f}\n")
    print("| bucket (mean tokens) | precision | method | s/step | trained tokens/s | MFU |")
    print("|---|---|---|---:|---:|---:|")
    for r in runs:
        print(f"| {r['bucket']} ({r['mean_tokens']}) | {r['precision']} | {r['method']} | {r['step_seconds']:.2f} | "
              f"{r['tokens_per_s']:,.0f} | {r['mfu']:.1%} |")
    print("\n| bucket | precision | SFT / bare | SFT / best bare | contrastive (terms off) / SFT |")
    print("|---|---|---:|---:|---:|")
    for r in ratios:
        print(f"| {r['bucket']} | {r['precision']} | {r['sft_over_bare']:.2f} | {r['sft_over_best_bare']:.2f} "
              f"| {r['contrastive_off_over_sft']:.2f} |")
    print(f"\nwrote {args.out} ({result['wall_seconds'] / 60:.1f} min)", file=sys.stderr)


if __name__ == "__main__":
    main()
