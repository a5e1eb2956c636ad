"""The data-efficiency curve end to end on a tiny random Llama (HF backend): nested training subsets, one
epoch each with SFT and contrastive, lm-eval on the omission suite, a leaderboard with a paired test per
size and a page with the curve; run again, it redoes nothing."""

import json
import subprocess
import sys
from pathlib import Path

from absence_tasks.schema import read_jsonl
from absence_tasks.schema import DOMAINS

ROOT = Path(__file__).resolve().parent.parent


def _curve_command(model: Path, out: Path, *sizes: str) -> list[str]:
    return [sys.executable, "-m", "study.curve", "--model", str(model), "--out", str(out), "--backend", "hf",
            "--sizes", *sizes, "--n-eval", "1", "--", "--max_length", "4096"]


def test_curve_trains_nested_subsets_and_publishes_the_data_efficiency_page(tiny_llama_dir, tmp_path):
    out = tmp_path / "curve"
    first = subprocess.run(_curve_command(tiny_llama_dir, out, "4", "2"), cwd=ROOT, capture_output=True,
                           text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-4000:]

    small, large = read_jsonl(out / "data" / "train-n2.jsonl"), read_jsonl(out / "data" / "train-n4.jsonl")
    assert len(small) == 2 and len(large) == 4 and large[:2] == small  # nested
    assert {instance.domain for instance in large} == set(DOMAINS)  # round-robin over the domains
    assert sorted(p.name for p in (out / "data" / "suite").iterdir()) == \
        sorted(f"{d}_omission_test.jsonl" for d in DOMAINS)

    from trainers.card import read_model_card

    for size in (2, 4):
        sft, contrastive = (read_model_card(out / "models" / f"{m}-n{size}") for m in ("sft", "contrastive"))
        for card in (sft, contrastive):
            # One epoch over the subset, 2 instances per optimizer step, a constant learning rate.
            assert card["compute"]["instances_trained"] == card["data"]["n_instances"] == size
            assert card["global_step"] == size // 2
            assert card["training_args"]["lr_scheduler_type"] == "constant"
        assert sft["compute"]["tokens_trained"] == contrastive["compute"]["tokens_trained"]
        assert contrastive["compute"]["flops"] > sft["compute"]["flops"]  # its forward-only passes

    board = json.loads((out / "leaderboard.json").read_text())
    rows = {row["model"]: row for row in board["rows"]}
    assert sorted(rows) == sorted(f"tiny-llama-{name}" for name in
                                  ("zero-shot", "sft-n2", "contrastive-n2", "sft-n4", "contrastive-n4"))
    assert rows["tiny-llama-sft-n4"]["training"]["instances"] == 4
    assert set(rows["tiny-llama-zero-shot"]["tasks"]) == {f"absence_{d}" for d in DOMAINS}
    assert [(c["row_a"]["model"], c["row_b"]["model"], c["task"]) for c in board["comparisons"]] == [
        (f"tiny-llama-contrastive-n{n}", f"tiny-llama-sft-n{n}", "average") for n in (2, 4)]

    page = out / "page"
    assert (page / "data_efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (page / "leaderboard.md").read_text()
    section = markdown.split("## Data efficiency", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    assert lines[0] == "| training instances | sft average F1 | contrastive average F1 |"
    assert [line.split(" | ")[0] for line in lines[1:]] == ["| 0", "| 2", "| 4"]
    assert 'id="data-efficiency"' in (page / "index.html").read_text()
    assert (page / "screenshot.png").is_file()

    again = subprocess.run(_curve_command(tiny_llama_dir, out, "2", "4"), cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stderr.count("done before, skipped") == 12  # model, data, 4 trainings, 5 evaluations, publish

    other = subprocess.run(_curve_command(tiny_llama_dir, out, "2", "8"), cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert other.returncode == 2
    assert other.stderr.strip().splitlines() == [
        f"curve: error: {out / 'plan.json'}: this curve was planned with sizes [2, 4], --n-eval 1, --seed 0; "
        f"use another --out for a different curve"]
