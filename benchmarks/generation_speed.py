"""Generation speed: instances/s per domain and variant (`python benchmarks/generation_speed.py`).

Each domain's source is loaded once first (the poetry corpus read takes a few seconds and is cached
per process), so the figures are the generator's own speed; the load time is printed separately.
"""

import argparse
import time

from absence_tasks.generate import generate_instances
from absence_tasks.schema import DOMAINS, VARIANTS
from absence_tasks.sources.poems import load_corpus_lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    start = time.perf_counter()
    load_corpus_lines()
    print(f"poetry corpus load: {time.perf_counter() - start:.1f}s")
    print("| domain | variant | instances | seconds | instances/s |\n|---|---|---:|---:|---:|")
    for domain in DOMAINS:
        for variant in VARIANTS:
            start = time.perf_counter()
            instances = generate_instances(domain, variant, args.n, "train", seed=0, progress=False)
            elapsed = time.perf_counter() - start
            print(f"| {domain} | {variant} | {len(instances)} | {elapsed:.2f} | {len(instances) / elapsed:,.0f} |")


if __name__ == "__main__":
    main()
