"""Evaluation throughput on the default suite, in one process: a bare torch loop, lm-eval + vLLM and
lm-eval + HF over the very same prompts, budgets and stops.

    python benchmarks/eval_speed.py --n 20 [--tasks absencebench absencebench_placeholder]
        [--model checkpoints/smollm2-135m-instruct] [--backends bare vllm hf] [--bare-dtype bfloat16]
        [--vllm-model-args dtype=bfloat16,gpu_memory_utilization=0.35,max_model_len=8192,enforce_eager=True]
        [--hf-dtype float32] [--out benchmarks/results/eval_speed.json]

`--vllm-model-args` is lm-eval's `--model_args` string for its vLLM backend (engine levers such as
`max_num_seqs=`, `max_num_batched_tokens=`, `enable_prefix_caching=` go there); the default is the one the
study and the README use. vLLM's CPU engine is bound to every core, as `absence-lm-eval` binds it, unless
`VLLM_CPU_OMP_THREADS_BIND` is set in the environment.

The bare loop is the reference for what the hardware allows: the task rows lm-eval would score (same
`--metadata`), each prompt rendered by the tokenizer's chat template as lm-eval's `--apply_chat_template`
does, length-sorted batches, one prefill per batch, greedy decoding with a key/value cache until each
answer hits its row's `max_gen_toks`, an end-of-turn token or the task's stop string (`greedy_batch`). For
each path the model load is timed apart from the evaluation; the report gives instances/s, mean F1, the ratios
`vllm_over_bare` and `hf_over_bare` (instances/s) and how many answers are identical to the bare loop's,
so a speed-up that changed the answers would show. Each path runs at the dtype that is fastest for it on
this CPU by default (HF float32: HF generation in bfloat16 had done only 53 of 60 instances after 30 min
here); pass the same dtype to all for a like-for-like comparison.
"""

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from absence_tasks.io import atomic_write_text  # noqa: E402
from absence_tasks.lm_eval_models import vllm_cpu_model_args  # noqa: E402
from absence_tasks.models import DEFAULT_CHECKPOINT, prepare_embedded_model  # noqa: E402

# What the study and the README pass to lm-eval's vLLM backend (study/experiment.py, Study.lm_eval).
VLLM_MODEL_ARGS = vllm_cpu_model_args("bfloat16")


def task_rows(tasks: list[str], task_manager) -> dict[str, tuple[list[dict], list[str]]]:
    """The rows lm-eval scores (each carries its `max_gen_toks`) and the stop strings, per task."""
    from lm_eval.tasks import get_task_dict

    def leaves(tree):
        for key, value in tree.items():
            yield from leaves(value) if isinstance(value, dict) else [(key, value)]

    return {name if isinstance(name, str) else name.group_name:
            (list(task.test_docs()), list(task.config.generation_kwargs["until"]))
            for name, task in leaves(get_task_dict(tasks, task_manager))}


def greedy_batch(model, tokenizer, prompts: list[list[int]], budgets: list[int], stop_ids: set[int],
                 until: list[list[str]]) -> list[list[int]]:
    """Greedy answers (token ids) to a batch of prompts: one left-padded prefill, then one decode step per
    token on the key/value cache. A row stops at an id in `stop_ids` (not kept), at its budget or once its
    text holds one of its `until` strings; a finished row leaves the batch and its cache, so a batch costs the decode steps
    its answers need, not the longest answer's steps for every row."""
    import torch
    from transformers import DynamicCache

    width = max(len(ids) for ids in prompts)
    input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(ids)) + ids for ids in prompts])  # [B, T]
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts])  # [B, T]
    generated = [[] for _ in prompts]
    cache = DynamicCache()
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=position, past_key_values=cache,
                   use_cache=True).logits[:, -1]  # [B, V]
    position = position[:, -1:]  # [B, 1]
    active = list(range(len(prompts)))  # the rows still decoding, in cache order
    while active:
        next_ids = logits.argmax(-1)  # [A]
        keep = []  # positions in `active` of the rows that go on
        for i, token in enumerate(next_ids.tolist()):
            row = generated[active[i]]
            if token in stop_ids:
                continue
            row.append(token)
            tail = tokenizer.decode(row[-8:])
            if len(row) < budgets[active[i]] and not any(stop in tail for stop in until[active[i]]):
                keep.append(i)
        if not keep:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep)
            cache.batch_select_indices(index)
            mask, position, next_ids = mask[index], position[index], next_ids[index]
            active = [active[i] for i in keep]
        mask = torch.cat([mask, torch.ones(len(active), 1, dtype=mask.dtype)], dim=1)  # [A, T + 1]
        position = position + 1
        logits = model(input_ids=next_ids[:, None], attention_mask=mask, position_ids=position,
                       past_key_values=cache, use_cache=True).logits[:, -1]  # [A, V]
    return generated


def bare_loop(args, task_manager) -> dict:
    """Plain torch: length-sorted batches, one prefill each, greedy decoding on the key/value cache."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from absence_tasks.lm_eval_tasks import doc_to_text, process_results

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.bare_dtype),
                                                 local_files_only=True).eval()
    stop_ids = set(model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
                   else [model.generation_config.eos_token_id])
    stop_ids |= {tokenizer.convert_tokens_to_ids("<|im_end|>")} - {None, tokenizer.unk_token_id}
    loaded = time.perf_counter()

    requests = []  # (task, doc, prompt ids, stop strings)
    for task, (docs, until) in task_rows(args.tasks, task_manager).items():
        for doc in docs:
            text = tokenizer.apply_chat_template([{"role": "user", "content": doc_to_text(doc)}], tokenize=False,
                                                 add_generation_prompt=True)
            requests.append((task, doc, tokenizer(text, add_special_tokens=False)["input_ids"], until))
    requests.sort(key=lambda r: len(r[2]))
    answers, f1 = {}, []
    with torch.inference_mode(), tqdm(total=len(requests), desc="bare loop", unit="instance") as bar:
        for first in range(0, len(requests), args.bare_batch_size):
            batch = requests[first:first + args.bare_batch_size]
            generated = greedy_batch(model, tokenizer, [ids for _, _, ids, _ in batch],
                                     [doc["max_gen_toks"] for _, doc, _, _ in batch], stop_ids,
                                     [until for _, _, _, until in batch])
            for (task, doc, _, until), tokens in zip(batch, generated):
                answer = tokenizer.decode(tokens, skip_special_tokens=True)
                for stop in until:
                    answer = answer.split(stop)[0]
                answers[(task, doc["id"])] = answer
                f1.append(process_results(doc, [answer])["f1"])
            bar.update(len(batch))
    done_at = time.perf_counter()
    return {"backend": "bare", "settings": f"dtype={args.bare_dtype},batch_size={args.bare_batch_size}",
            "load_s": loaded - start, "eval_s": done_at - loaded,
            "instances": len(requests), "instances_per_s": len(requests) / (done_at - loaded),
            "f1": sum(f1) / len(f1), "answers": answers}


def lm_eval_path(backend: str, args, task_manager) -> dict:
    from lm_eval import simple_evaluate

    start = time.perf_counter()
    if backend == "hf":
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(pretrained=args.model, dtype=args.hf_dtype, batch_size=args.hf_batch_size, device="cpu")
        settings = f"dtype={args.hf_dtype},batch_size={args.hf_batch_size}"
    else:
        from lm_eval.models.vllm_causallms import VLLM
        from lm_eval.utils import simple_parse_args_string

        from absence_tasks.lm_eval_models import use_every_core_for_vllm_cpu

        use_every_core_for_vllm_cpu()
        lm = VLLM(pretrained=args.model, **simple_parse_args_string(args.vllm_model_args))
        settings = args.vllm_model_args
    loaded = time.perf_counter()
    results = simple_evaluate(model=lm, tasks=args.tasks, task_manager=task_manager, apply_chat_template=True,
                              log_samples=True)
    done = time.perf_counter()
    samples = [(task, s) for task, task_samples in results["samples"].items() for s in task_samples]  # leaves'
    answers = {(task, s["doc"]["id"]): s["filtered_resps"][0] for task, s in samples}
    del lm
    gc.collect()
    return {"backend": backend, "settings": settings, "load_s": loaded - start, "eval_s": done - loaded,
            "instances": len(samples), "instances_per_s": len(samples) / (done - loaded),
            "f1": sum(s["f1"] for _, s in samples) / len(samples), "answers": answers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None,
                        help="a checkpoint (default: the embedded SmolLM2, converted once into checkpoints/)")
    parser.add_argument("--n", type=int, default=20, help="instances per domain")
    parser.add_argument("--tasks", nargs="+", default=["absencebench"],
                        help="lm-eval task groups (the study's suite: absencebench absencebench_placeholder)")
    parser.add_argument("--backends", nargs="+", choices=("bare", "vllm", "hf"), default=["bare", "vllm", "hf"])
    parser.add_argument("--bare-dtype", default="bfloat16")
    parser.add_argument("--bare-batch-size", type=int, default=8)
    parser.add_argument("--vllm-model-args", default=VLLM_MODEL_ARGS)
    parser.add_argument("--hf-dtype", default="float32")
    parser.add_argument("--hf-batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    args = parser.parse_args()
    if args.model is None:
        args.model = str(prepare_embedded_model(ROOT / DEFAULT_CHECKPOINT))

    from lm_eval.tasks import TaskManager

    # The tasks size budgets in the evaluated model's tokens (lm-eval hands them its model_args).
    task_manager = TaskManager(include_path=str(ROOT / "task_configs"),
                               metadata={"n": args.n, "pretrained": args.model})
    rows = [bare_loop(args, task_manager) if backend == "bare" else lm_eval_path(backend, args, task_manager)
            for backend in args.backends]
    by_backend = {r["backend"]: r for r in rows}
    report = {"command": "python benchmarks/eval_speed.py " + " ".join(
                  f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
                  for k, v in vars(args).items() if v is not None),
              "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                          "vllm_cpu_threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND"),
                          "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
              "rows": [{k: v for k, v in r.items() if k != "answers"} for r in rows]}
    if "bare" in by_backend:
        bare = by_backend["bare"]
        for name in ("vllm", "hf"):
            if name in by_backend:
                other = by_backend[name]
                report[f"{name}_over_bare"] = other["instances_per_s"] / bare["instances_per_s"]
                report[f"{name}_answers_identical_to_bare"] = sum(
                    other["answers"].get(key) == answer for key, answer in bare["answers"].items())
                report[f"{name}_f1_minus_bare"] = other["f1"] - bare["f1"]
    print(json.dumps(report, indent=2))
    print("| path | settings | load s | eval s | instances | instances/s | F1 |\n|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['backend']} | {r['settings']} | {r['load_s']:.0f} | {r['eval_s']:.0f} | {r['instances']} | "
              f"{r['instances_per_s']:.3f} | {r['f1']:.4f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":  # vLLM starts worker processes
    main()
