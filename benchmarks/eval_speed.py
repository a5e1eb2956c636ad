"""HF vs vLLM throughput on the default 3-domain omission suite, in one process.

    python benchmarks/eval_speed.py --n 20 [--model checkpoints/smollm2-135m-instruct]
        [--hf-dtype float32] [--vllm-dtype bfloat16]

For each backend: load the model (timed apart), then score `absencebench` (n instances per domain,
chat template on, same generation budgets) and report instances/s of the evaluation itself and the
mean F1, so a speed-up that changed the answers would show. Each backend runs at the dtype that is fastest
for it on this CPU by default (HF: float32 -- HF generation in bfloat16 had done only 53 of 60 instances
after 30 min here; vLLM: bfloat16); pass the same dtype to both for a like-for-like comparison.
"""

import argparse
import gc
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(backend: str, args, task_manager) -> dict:
    from lm_eval import simple_evaluate

    start = time.perf_counter()
    if backend == "hf":
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(pretrained=args.model, dtype=args.hf_dtype, batch_size=args.hf_batch_size, device="cpu")
    else:
        from lm_eval.models.vllm_causallms import VLLM

        lm = VLLM(pretrained=args.model, dtype=args.vllm_dtype, gpu_memory_utilization=0.35, max_model_len=8192,
                  enforce_eager=True)  # a torch.compile start-up costs minutes on CPU and gains nothing here
    loaded = time.perf_counter()
    results = simple_evaluate(model=lm, tasks=["absencebench"], task_manager=task_manager,
                              apply_chat_template=True)
    done = time.perf_counter()
    n_instances = sum(v["effective"] for v in results["n-samples"].values())
    del lm
    gc.collect()
    dtype = args.hf_dtype if backend == "hf" else args.vllm_dtype
    return {"backend": backend, "dtype": dtype, "load_s": loaded - start, "eval_s": done - loaded, "instances": n_instances,
            "instances_per_s": n_instances / (done - loaded), "f1": results["results"]["absencebench"]["f1,none"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "checkpoints" / "smollm2-135m-instruct"))
    parser.add_argument("--n", type=int, default=20, help="instances per domain")
    parser.add_argument("--hf-dtype", default="float32")
    parser.add_argument("--vllm-dtype", default="bfloat16")
    parser.add_argument("--hf-batch-size", type=int, default=8)
    parser.add_argument("--backends", nargs="+", default=["hf", "vllm"])
    args = parser.parse_args()

    from lm_eval.tasks import TaskManager

    task_manager = TaskManager(include_path=str(ROOT / "task_configs"), metadata={"n": args.n})
    rows = [run(backend, args, task_manager) for backend in args.backends]
    print(json.dumps(rows, indent=2))
    print("| backend | dtype | load s | eval s | instances | instances/s | absencebench F1 |\n|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['backend']} | {r['dtype']} | {r['load_s']:.0f} | {r['eval_s']:.0f} | {r['instances']} | "
              f"{r['instances_per_s']:.3f} | {r['f1']:.4f} |")
    if len(rows) == 2:
        print(f"vLLM / HF throughput: {rows[1]['instances_per_s'] / rows[0]['instances_per_s']:.2f}x")


if __name__ == "__main__":  # vLLM starts worker processes
    main()
