"""Refresh the PR records shipped in the package from the developers' copy (`../shared/data/prs`).

    python scripts/embed_prs.py [--from ../shared/data/prs]

Writes `absence_tasks/sources/data/prs/<file>.jsonl.gz`, one per source file, every record tagged with
its repository's licence (SPDX id). The records are otherwise unchanged, so the embedded pool and the
shared one give the same documents. A repository missing from `LICENSES` is an error: nothing is
shipped without a known permissive licence (add it here, its text under `licenses/` and a NOTICE entry).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from absence_tasks.schema import DataError
from absence_tasks.sources import prs

LICENSES = {
    "EleutherAI/lm-evaluation-harness": "MIT",
    "huggingface/trl": "Apache-2.0",
    "tokio-rs/axum": "MIT",
    "spf13/cobra": "Apache-2.0",
    "pallets/click": "BSD-3-Clause",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", default=Path(__file__).resolve().parents[2] / "shared" / "data" / "prs",
                        type=Path)
    args = parser.parse_args()
    try:
        for path in sorted(args.source.glob("*.jsonl")):
            records = prs.read_pr_records(path)
            repos = {r["repo"] for r in records}
            if unknown := sorted(repos - set(LICENSES)):
                raise DataError(f"{path}: no licence on record for {', '.join(unknown)}")
            out = prs.EMBEDDED_PRS / f"{path.name}.gz"
            prs.write_pr_records(out, [{**r, "license": LICENSES[r["repo"]]} for r in records])
            print(f"{out}: {len(records)} records of {', '.join(sorted(repos))}")
    except DataError as e:
        print(f"embed_prs: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
