"""The benchmarks' own logic (their measurements are run by hand and committed, never in the suite)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from absence_tasks.generate import generate_instances
from absence_tasks.scoring import score_response

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import degenerate_stop  # noqa: E402


def test_a_stopped_answer_ends_with_the_line_that_reached_k_repeats():
    assert degenerate_stop.stopped_answer("a\nb\na\na\nc\n", 3) == "a\nb\na\na\n"
    assert degenerate_stop.stopped_answer("a\nb\na\n", 3) == "a\nb\na\n"
    assert degenerate_stop.stopped_answer("a\na\na", 3) == "a\na\na"  # the last line may still grow


def _samples(path: Path, answers) -> None:
    """Logged samples as lm-eval writes them with --log_samples (the fields the benchmark reads)."""
    with path.open("w") as f:
        for number, (instance, response) in enumerate(answers):
            score = score_response(instance, response)
            f.write(json.dumps({"doc_id": number, "doc": instance.to_dict(),
                                "arguments": {"gen_args_0": {"arg_0": "prompt " * 10}},
                                "resps": [[response]], "filtered_resps": [response],
                                "f1": score.f1, "precision": score.precision, "recall": score.recall}) + "\n")


def test_replayed_stop_counts_the_scores_it_would_change(tmp_path):
    instances = generate_instances("numerical", "omission", 20, "test", 0)
    looping = next(i for i in instances if len(i.answer_lines) >= 2)
    perfect = next(i for i in instances if i is not looping)
    gold = list(looping.answer_lines)
    # The loop comes between two gold lines: a stop at k = 3 loses the second one, at k = 10 nothing.
    loop = [next(line for line in looping.original_lines if line not in gold)] * 5
    answers = [(looping, "\n".join([gold[0], *loop, *gold[1:]]) + "\n"), (perfect, "\n".join(perfect.answer_lines))]
    (tmp_path / "run").mkdir()
    _samples(tmp_path / "run" / "samples_absence_numerical_2026-12-02T00-00-00.jsonl", answers)
    out = tmp_path / "stop.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "degenerate_stop.py"), f"m={tmp_path / 'run'}",
                    "--repeats", "3", "10", "--out", str(out)], check=True, capture_output=True)
    k3, k10 = json.loads(out.read_text())["models"]["m"]
    assert (k3["answers_cut"], k3["answers_changed"], k3["saved"] > 0) == (1, 1, True)
    assert k3["f1_stopped"] < k3["f1"] == pytest.approx(100 * sum(score_response(i, a).f1 for i, a in answers) / 2, abs=0.01)
    assert (k10["answers_cut"], k10["answers_changed"], k10["saved"], k10["f1_stopped"]) == (0, 0, 0, k10["f1"])
    assert k3["prompt"] == 2 * len("prompt " * 10)  # characters: no --tokenizer


def test_a_folder_without_samples_is_one_error_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "degenerate_stop.py"), f"m={tmp_path}",
                             "--out", str(tmp_path / "stop.json")], capture_output=True, text=True)
    assert result.returncode != 0 and result.stderr.strip().count("\n") == 0 and "no lm-eval samples" in result.stderr
    assert not (tmp_path / "stop.json").exists()


def test_the_bare_loops_batch_decodes_what_generate_decodes_row_by_row(tiny_llama_dir):
    """Rows of different prompt lengths and budgets, one of them ended by a stop id: the batch that drops
    finished rows from its cache answers every row as `generate` answers it alone."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import eval_speed

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"]
               for text in ("3\n4\n5\n6\n", "the first line\nthe third line\nand the last one, longer\n", "}\n)\n")]
    budgets = [4, 12, 7]

    def alone(ids, budget, stop_ids):
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=budget, do_sample=False, eos_token_id=sorted(stop_ids) or None,
                             pad_token_id=tokenizer.pad_token_id)[0, len(ids):].tolist()
        return [token for token in out if token not in stop_ids]

    free = [alone(ids, budget, set()) for ids, budget in zip(prompts, budgets)]
    assert [len(tokens) for tokens in free] == budgets
    stop_ids = {free[1][5]}  # ends the longest row early: the others finish at their budgets or at it
    expected = [alone(ids, budget, stop_ids) for ids, budget in zip(prompts, budgets)]
    assert len(expected[1]) <= 5
    with torch.inference_mode():
        assert eval_speed.greedy_batch(model, tokenizer, prompts, budgets, stop_ids, [["\n\n\n"]] * 3) == expected
        assert eval_speed.greedy_batch(model, tokenizer, prompts, budgets, set(), [["\n\n\n"]] * 3) == free
