"""Attention-to-gap analysis: the ratio and the position mapping as pure functions, the memory-bounded
model loop against a plain full forward pass, and the CLI end to end on a tiny random Llama."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from absence_tasks.generate import default_config, generate_instances
from absence_tasks.prompts import render_documents, render_prompt
from absence_tasks.schema import DOMAINS, PLACEHOLDER, VARIANTS, Instance, write_jsonl
from analysis import common
from analysis.attention import cli as attention_cli
from analysis.attention import measure, positions
from trainers.data import document_char_spans

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Short documents keep the model runs fast; the mapping logic does not depend on length.
SHORT = {domain: replace(default_config(domain), min_lines=10, max_lines=30) for domain in DOMAINS}
CLI_MIX = (("numerical", "omission"), ("poetry", "placeholder"), ("github_prs", "needle"))


@pytest.fixture(scope="module")
def instances_by_kind() -> dict[tuple[str, str], list[Instance]]:
    return {(domain, variant): generate_instances(domain, variant, 3, "test", seed=1, config=SHORT[domain],
                                                  progress=False)
            for domain in DOMAINS for variant in VARIANTS}


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir, local_files_only=True)


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_llama_dir):
    return common.load_model(tiny_llama_dir)


def _instance(variant, original, modified, omitted=(), inserted=(), metadata=None, domain="poetry"):
    return Instance("hand-built", domain, variant, "test", tuple(original), tuple(modified), tuple(omitted),
                    tuple(inserted), metadata or {})


# ---- the ratio -----------------------------------------------------------------------------------------

def test_uniform_attention_gives_ratio_one_for_every_layer_head_and_query():
    rng = np.random.default_rng(0)
    n_keys = 300
    region = np.arange(40, 260)
    target = np.array([50, 51, 120, 200])
    draws = measure.draw_baseline_positions(region, target, 16, rng)
    rows = np.full((2, 4, 3, n_keys), 1.0 / n_keys)
    ratio = measure.gap_attention_ratio(rows, target, draws)
    assert ratio.shape == (2, 4, 3)
    np.testing.assert_allclose(ratio, 1.0, atol=1e-9)


def test_attention_concentrated_on_the_gap_gives_a_large_ratio_and_avoiding_it_zero():
    rng = np.random.default_rng(1)
    n_keys, target = 300, np.array([50, 51, 120, 200])
    region = np.arange(40, 260)
    draws = measure.draw_baseline_positions(region, target, 16, rng)
    focused = np.full(n_keys, 0.2 / n_keys)
    focused[target] += 0.8 / len(target)
    avoiding = np.full(n_keys, 1.0 / (n_keys - len(target)))
    avoiding[target] = 0.0
    elsewhere = np.zeros(n_keys)
    elsewhere[0] = 1.0  # all mass outside the document: no baseline to compare with
    ratios = measure.gap_attention_ratio(np.stack([focused, avoiding, elsewhere]), target, draws)
    assert ratios[0] > 100
    assert ratios[1] == 0.0
    assert np.isnan(ratios[2])


def test_baseline_draws_are_seeded_sized_like_the_target_and_avoid_it():
    region, target = np.arange(10, 60), np.array([12, 30, 31])
    draws = measure.draw_baseline_positions(region, target, 8, np.random.default_rng(5))
    again = measure.draw_baseline_positions(region, target, 8, np.random.default_rng(5))
    other = measure.draw_baseline_positions(region, target, 8, np.random.default_rng(6))
    assert draws.shape == (8, 3)
    np.testing.assert_array_equal(draws, again)
    assert not np.array_equal(draws, other)
    for draw in draws:
        assert len(set(draw)) == 3 and set(draw) <= set(region) - set(target)
    # A region with too few other positions falls back to the whole region.
    small = measure.draw_baseline_positions(np.arange(4), np.array([0, 1, 2]), 3, np.random.default_rng(0))
    assert small.shape == (3, 3) and set(small.ravel()) <= {0, 1, 2, 3}
    assert measure.draw_baseline_positions(region, np.array([], dtype=int), 4, np.random.default_rng(0)).size == 0


def test_bootstrap_ci_and_correlations():
    values = np.array([1.0, 2.0, 3.0, 4.0, np.nan, 10.0])
    low, high = measure.finite_mean_ci(values, np.random.default_rng(0), 500)
    assert measure.finite_mean_ci(values, np.random.default_rng(0), 500) == (low, high)
    assert low < 4.0 < high
    assert measure.finite_mean_ci(np.array([np.nan]), np.random.default_rng(0)) is None
    x = np.arange(1.0, 9.0)
    monotone = measure.correlation(x, np.exp(x))
    assert monotone["n"] == 8 and monotone["spearman"] == pytest.approx(1.0) and monotone["pearson"] < 0.95
    tied = measure.correlation([1, 2, 2, 3, np.nan], [1, 3, 2, 4, 5])
    assert tied["n"] == 4 and 0 < tied["spearman"] < 1
    assert np.isnan(measure.correlation([1, 1, 1, 1], [1, 2, 3, 4])["pearson"])



def test_ratios_are_averaged_as_logarithms_so_one_near_empty_baseline_does_not_dominate():
    # [instances, layers, heads] = [3, 1, 2]: head 0 is 4, 1/4 and 1; head 1 is 1 except one instance at 10,000
    # (its baseline got almost no attention) and one where the baseline got none at all (NaN: left out).
    ratios = np.array([[[4.0, 1.0]], [[0.25, 10_000.0]], [[1.0, np.nan]]])
    summary = measure.summarize_measure(ratios, np.random.default_rng(0), 200)
    assert summary["mean_ratio"][0] == pytest.approx([1.0, 100.0])  # geometric: (4 · 1/4 · 1)^(1/3), (1 · 10^4)^(1/2)
    assert (summary["best_head"]["layer"], summary["best_head"]["head"]) == (0, 1)
    assert summary["best_head"]["n"] == 2
    # Over heads, then over instances: 2, 50 and 1 -> 100^(1/3).
    assert summary["mean_over_heads"]["ratio"] == pytest.approx(100 ** (1 / 3))
    low, high = summary["mean_over_heads"]["ci"]
    assert 1.0 - 1e-9 <= low <= summary["mean_over_heads"]["ratio"] <= high <= 50.0 + 1e-9  # within the values
    assert np.isnan(measure.log_ratios([0.0, -1.0, np.nan])).all()

# ---- where the gaps are --------------------------------------------------------------------------------

def test_find_gaps_on_hand_built_instances():
    omission = _instance("omission", ["a", "b", "", "c", "d", "e", "f"], ["b", "", "d", "f"], omitted=[0, 3, 5])
    assert positions.find_gaps(omission) == [
        positions.Gap(before=None, after=0, placeholders=(), absent=(0,)),
        positions.Gap(before=0, after=2, placeholders=(), absent=(3,)),  # the blank line is skipped
        positions.Gap(before=2, after=3, placeholders=(), absent=(5,)),
    ]
    run = _instance("omission", ["a", "b", "c", "d"], ["a", "d"], omitted=[1, 2])
    assert positions.find_gaps(run) == [positions.Gap(before=0, after=1, placeholders=(), absent=(1, 2))]
    placeholder = _instance("placeholder", ["a", "b", "c"], ["a", PLACEHOLDER, "c"], omitted=[1])
    assert positions.find_gaps(placeholder) == [positions.Gap(before=0, after=2, placeholders=(1,), absent=(1,))]
    needle = _instance("needle", ["a", "b", "c"], ["a", "X", "b", "c", "Y"], inserted=[1, 4])
    assert positions.find_gaps(needle) == [positions.Gap(before=0, after=1, placeholders=(), absent=(1,)),
                                           positions.Gap(before=2, after=None, placeholders=(), absent=(4,))]
    dropped = _instance("omission", ["a", "b", "c", "d"], ["a", "d"], omitted=[2],
                        metadata={"dropped_context_indices": [1]}, domain="github_prs")
    assert positions.find_gaps(dropped) == [positions.Gap(before=0, after=1, placeholders=(), absent=(2,))]


def test_document_spans_are_not_fooled_by_a_document_that_also_occurs_in_the_instructions():
    # The one-line modified copy "Now" also starts the sentence that introduces it.
    instance = _instance("omission", ["Now", "here"], ["Now"], omitted=[1])
    prompt = render_prompt(instance)
    original_span, modified_span = document_char_spans(instance)
    assert prompt[slice(*original_span)] == "Now\nhere" and prompt[slice(*modified_span)] == "Now"
    assert prompt.find("Now", original_span[1]) < modified_span[0]  # a text search would pick the wrong one
    sentinel = "\x00modified\x00"
    with_sentinel = render_documents("poetry", "omission", "Now\nhere", sentinel)
    assert with_sentinel.index(sentinel) == modified_span[0]


@pytest.mark.parametrize("use_chat_template", [True, False], ids=["chat", "raw"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("domain", DOMAINS)
def test_gap_tokens_decode_to_the_lines_around_the_gap_and_to_the_missing_line(
        instances_by_kind, tokenizer, domain, variant, use_chat_template):
    for instance in instances_by_kind[(domain, variant)]:
        where = positions.gap_positions(instance, tokenizer, use_chat_template)
        ids = where.input_ids
        gap_lines = instance.original_lines if variant == "needle" else instance.modified_lines
        gaps = positions.find_gaps(instance)
        assert where.n_gaps == len(gaps) >= 1
        assert set(where.flank) <= set(where.gap_region) and set(where.omitted) <= set(where.present_region)
        assert not set(where.gap_region) & set(where.present_region)

        flank_text = [tokenizer.decode([ids[p]]).strip() for p in where.flank]
        if variant == "placeholder":
            n_placeholders = sum(len(g.placeholders) for g in gaps)
            assert "".join(flank_text) == "".join(PLACEHOLDER.split()) * n_placeholders
        else:
            assert 1 <= len(flank_text) <= 2 * len(gaps)
            endings = {gap_lines[g.before].strip() for g in gaps if g.before is not None}
            beginnings = {gap_lines[g.after].strip() for g in gaps if g.after is not None}
            for text in flank_text:
                assert text and (any(line.endswith(text) for line in endings)
                                 or any(line.startswith(text) for line in beginnings)), (instance.id, text)
            for line in endings:
                assert any(text and line.endswith(text) for text in flank_text), (instance.id, line)
            for line in beginnings:
                assert any(text and line.startswith(text) for text in flank_text), (instance.id, line)

        omitted_text = tokenizer.decode([ids[p] for p in where.omitted])
        assert "".join(omitted_text.split()) == "".join("".join(x.split()) for x in instance.answer_lines)


# ---- the model loop ------------------------------------------------------------------------------------

def test_chunked_answer_attention_equals_a_full_forward_pass(model_and_tokenizer, instances_by_kind):
    import torch

    model, tokenizer = model_and_tokenizer
    instance = instances_by_kind[("poetry", "omission")][0]
    where = positions.gap_positions(instance, tokenizer)
    weights = measure.measure_weights(where, 8, measure.instance_rng(0, instance.id))
    n_prompt = len(where.input_ids)
    assert weights.shape == (n_prompt, 4)

    result = measure.answer_attention(model, where.input_ids, weights, strip_positions=where.gap_region,
                                        max_new_tokens=3, prefill_chunk=37)
    # The shared tiny checkpoint's shape may change; only its layer x head grid matters here.
    grid = (model.config.num_hidden_layers, model.config.num_attention_heads)
    assert result.masses.shape == (*grid, 4) and result.strip.shape == (grid[0], len(where.gap_region))
    ids = torch.tensor([list(where.input_ids)])
    with torch.inference_mode():
        greedy = model.generate(ids, max_new_tokens=3, do_sample=False)[0, n_prompt:].tolist()
    assert result.generated == greedy[:len(result.generated)] and result.n_queries == len(result.generated)

    full_input = torch.tensor([list(where.input_ids) + result.generated[:-1]])
    with torch.inference_mode():
        full = model(full_input, output_attentions=True)
    # Rows of the queries that emitted the answer tokens, over the prompt keys.
    rows = torch.stack([a[0, :, n_prompt - 1:, :n_prompt] for a in full.attentions]).double().numpy()
    np.testing.assert_allclose(result.masses, (rows @ weights).mean(axis=2), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(result.strip, rows[..., where.gap_region].mean(axis=1).mean(axis=1),
                               rtol=1e-4, atol=1e-8)
    ratios = measure.ratios_from_masses(result.masses)
    assert set(ratios) == {"flank", "omitted"} and all(r.shape == grid for r in ratios.values())
    assert all(np.isfinite(r).all() for r in ratios.values())


# ---- command line --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_data(tmp_path_factory, instances_by_kind) -> Path:
    path = tmp_path_factory.mktemp("attention-data") / "mixed.jsonl"
    write_jsonl(path, [inst for kind in CLI_MIX for inst in instances_by_kind[kind]])
    return path


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_cli_end_to_end_writes_summary_figures_and_comparison(tiny_llama_dir, cli_data, tmp_path, capsys):
    instance_ids = [json.loads(line)["id"] for line in cli_data.read_text().splitlines()]
    # The scores in both formats --scores reads: absence-bench score --out, and lm-eval's --log_samples.
    scores, samples = tmp_path / "scores.jsonl", tmp_path / "samples_absence_poetry.jsonl"
    scores.write_text("".join(json.dumps({"id": i, "f1": k / 10}) + "\n" for k, i in enumerate(instance_ids[:5])))
    samples.write_text("".join(json.dumps({"doc_id": k, "doc": {"id": i}, "f1": (k + 5) / 10}) + "\n"
                               for k, i in enumerate(instance_ids[5:])))
    args = ["--model", str(tiny_llama_dir), "--data", str(cli_data), "--generate", "--max-new-tokens", "2",
            "--scores", str(scores), str(samples), "--baseline-draws", "8", "--bootstrap", "200", "--strips", "1"]
    runs = [tmp_path / "run-a", tmp_path / "run-b"]
    for out in runs:
        assert attention_cli.main(args + ["--out", str(out)]) == 0
    capsys.readouterr()

    summary_bytes = (runs[0] / "summary.json").read_bytes()
    assert summary_bytes == (runs[1] / "summary.json").read_bytes()  # same seed, same bytes
    summary = json.loads(summary_bytes)
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    grid = (config["num_hidden_layers"], config["num_attention_heads"])
    assert summary["n_instances"] == 9 and (summary["n_layers"], summary["n_heads"]) == grid
    assert summary["settings"]["chat_template"] is True
    assert list(summary["groups"]) == ["overall", *DOMAINS]
    for name, group in summary["groups"].items():
        assert group["n_instances"] == (9 if name == "overall" else 3)
        for kind in ("flank", "omitted"):
            stats = group[kind]
            assert np.array(stats["mean_ratio"], dtype=float).shape == grid
            best = stats["best_head"]
            assert 0 <= best["layer"] < grid[0] and 0 <= best["head"] < grid[1]
            assert best["ratio"] == max(max(row) for row in stats["mean_ratio"])
            assert best["ci"][0] <= best["ratio"] <= best["ci"][1]
            assert stats["mean_over_heads"]["ci"][0] <= stats["mean_over_heads"]["ratio"] <= stats["mean_over_heads"]["ci"][1]
            assert group["f1_correlation"][kind]["n"] == group["n_instances"]
    records = summary["instances"]
    assert [r["id"] for r in records] == instance_ids
    assert all(r["ratio_flank"] > 0 and r["ratio_omitted"] > 0 and 1 <= r["n_queries"] <= 2 for r in records)
    assert [r["f1"] for r in records] == [k / 10 for k in range(9)]

    files = sorted(p.name for p in runs[0].iterdir())
    first_of_each_domain = [f"strip_{instance_ids[k]}.png" for k in (0, 3, 6)]
    assert files == sorted(["summary.json", *(f"heatmap_{d}.png" for d in DOMAINS), *first_of_each_domain])
    assert all((runs[0] / f).read_bytes().startswith(b"\x89PNG") for f in files if f.endswith(".png"))

    compared = tmp_path / "compared"
    assert attention_cli.main(["--compare", *map(str, runs), "--out", str(compared)]) == 0
    assert (compared / "comparison.png").read_bytes().startswith(b"\x89PNG")
    table = json.loads((compared / "comparison.json").read_text())
    assert [run["label"] for run in table["runs"]] == [tiny_llama_dir.name] * 2
    assert "difference_from_first" not in table["runs"][0]["groups"]["overall"]
    for name, group in table["runs"][1]["groups"].items():
        assert group["f1_correlation"] == summary["groups"][name]["f1_correlation"]
        for kind in ("flank", "omitted"):
            # The same model on the same instances with the same seed: every paired difference is exactly 0.
            assert group["difference_from_first"][kind] == {"n": 9 if name == "overall" else 3,
                                                            "factor": 1.0, "ci": [1.0, 1.0], "p_value": 1.0}


def test_cli_bad_model_path_exits_2_with_one_line_and_no_output(cli_data, tmp_path):
    out = tmp_path / "out"
    missing = tmp_path / "no-such-model"
    proc = subprocess.run([sys.executable, "-m", "analysis.attention", "--model", str(missing),
                           "--data", str(cli_data), "--out", str(out)],
                          capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert proc.returncode == 2
    assert str(missing) in _one_error_line(proc.stderr)
    assert not out.exists()


def test_cli_bad_inputs_exit_2_with_one_line_and_no_output(tiny_llama_dir, cli_data, tmp_path, capsys):
    out = tmp_path / "out"
    not_a_model = tmp_path / "folder"
    not_a_model.mkdir()
    broken = tmp_path / "broken.jsonl"
    broken.write_text(cli_data.read_text().splitlines()[0] + "\n{not json\n")
    bad_scores = tmp_path / "scores.jsonl"
    bad_scores.write_text('{"id": "x", "f1": "high"}\n')
    twice = tmp_path / "twice.jsonl"
    twice.write_text('{"id": "x", "f1": 0.5}\n{"doc": {"id": "x"}, "f1": 0.25}\n')
    cases = [
        (["--model", str(not_a_model), "--data", str(cli_data)], str(not_a_model)),
        (["--model", str(tiny_llama_dir), "--data", str(broken)], f"{broken}:2"),
        (["--model", str(tiny_llama_dir), "--data", str(cli_data), "--scores", str(bad_scores)], f"{bad_scores}:1"),
        (["--model", str(tiny_llama_dir), "--data", str(cli_data), "--scores", str(twice)], f"{twice}:2"),
    ]
    for args, named in cases:
        assert attention_cli.main(args + ["--out", str(out)]) == 2
        assert named in _one_error_line(capsys.readouterr().err)
        assert not out.exists()
    assert attention_cli.main(["--compare", str(tmp_path), "--out", str(out)]) == 2
    assert "summary.json" in _one_error_line(capsys.readouterr().err)
    assert not out.exists()
