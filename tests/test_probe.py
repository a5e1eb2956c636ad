"""Gap probe: rows and labels as pure functions, the hooked feature extraction against a plain full
forward pass, the probe on attention built by a known rule and on a random model, the grouped split,
and the CLI end to end (two tiny random Llamas) and on bad input."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from absence_tasks.generate import default_config, generate_instances
from absence_tasks.schema import DOMAINS, PLACEHOLDER, Instance, write_jsonl
from analysis import common
from analysis.attention import positions
from analysis.probe import classifier, features
from analysis.probe import cli as probe_cli
from analysis.probe.options import ProbeOptions

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHORT = {domain: replace(default_config(domain), min_lines=10, max_lines=30) for domain in DOMAINS}


@pytest.fixture(scope="module")
def poetry_instances() -> list[Instance]:
    return generate_instances("poetry", "omission", 24, "test", seed=3, config=SHORT["poetry"], progress=False)


@pytest.fixture(scope="module")
def mixed_instances() -> list[Instance]:
    return [inst for domain in DOMAINS
            for inst in generate_instances(domain, "omission", 4, "test", seed=4, config=SHORT[domain], progress=False)]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_llama_dir):
    return common.load_model(tiny_llama_dir)


@pytest.fixture(scope="module")
def second_tiny_llama_dir(tiny_llama_dir, tmp_path_factory) -> Path:
    from absence_tasks.models import tiny_llama_checkpoint

    return tiny_llama_checkpoint(tmp_path_factory.mktemp("models") / "tiny-llama-b", seed=1, vocab_from=tiny_llama_dir)


def _instance(variant, original, modified, omitted=(), metadata=None):
    return Instance("hand-built", "poetry", variant, "test", tuple(original), tuple(modified), tuple(omitted), (),
                    metadata or {})


def _span_text(tokenizer, tokenized, span) -> str:
    return tokenizer.decode(list(tokenized.input_ids[span[0]:span[1]])).strip()


# ---- rows, labels, spans -------------------------------------------------------------------------------

def test_rows_labels_and_spans_of_a_hand_built_omission(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    original = ["alpha line", "bravo line", "", "charlie line", "delta line", "echo line", "foxtrot line"]
    # Missing: "alpha line" (before the first line), "delta line" (after a blank), "foxtrot line" (at the end).
    instance = _instance("omission", original, ["bravo line", "", "charlie line", "echo line"], omitted=[0, 4, 6])
    tokenized = positions.tokenize_prompt(instance, tokenizer)
    rows = features.line_queries(instance, tokenized)

    assert rows.line_indices.tolist() == [0, 2, 3]          # the blank line has no tokens and is not a row
    assert rows.labels.tolist() == [True, False, True]
    assert rows.n_trailing_gaps == 1                          # "foxtrot line" has no line after it
    assert rows.spans.shape == (3, len(features.SPAN_COLUMNS), 2)
    first_tokens = [tokenizer.decode([tokenized.input_ids[p]]) for p in rows.positions]
    assert all(word.startswith(t.strip()) and t.strip() for t, word in zip(first_tokens, ["bravo", "charlie", "echo"]))
    matching = [_span_text(tokenizer, tokenized, span) for span in rows.spans[:, 1]]
    expected = [_span_text(tokenizer, tokenized, span) for span in rows.spans[:, 2]]
    assert matching == ["bravo line", "charlie line", "echo line"]
    assert expected == ["alpha line", "charlie line", "delta line"]  # the missing line where there is a gap
    original_span, modified = rows.spans[0, 0], rows.spans[:, 3]
    assert _span_text(tokenizer, tokenized, original_span) == "\n".join(original).strip()
    assert (modified[:, 1] == rows.positions + 1).all() and (modified[:, 0] == modified[0, 0]).all()
    assert _span_text(tokenizer, tokenized, modified[-1]) == "bravo line\n\ncharlie line\necho"


def test_placeholder_rows_mark_the_placeholder_line_and_needles_are_refused(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    instance = _instance("placeholder", ["a one", "b two", "c three"], ["a one", PLACEHOLDER, "c three"], omitted=[1])
    tokenized = positions.tokenize_prompt(instance, tokenizer)
    rows = features.line_queries(instance, tokenized)
    assert rows.line_indices.tolist() == [0, 1, 2] and rows.labels.tolist() == [False, True, False]
    assert _span_text(tokenizer, tokenized, rows.spans[1, 1]) == "b two"   # the line the marker stands for
    needle = Instance("n", "poetry", "needle", "test", ("a", "b"), ("a", "X", "b"), (), (1,), {})
    with pytest.raises(ValueError, match="needle"):
        features.line_queries(needle, positions.tokenize_prompt(needle, tokenizer))


def test_statistics_from_masses_and_the_lookback_ratio():
    spans = np.array([[[10, 30], [12, 15], [16, 18], [40, 45]]])           # original 20 tokens, modified copy 5
    masses = np.zeros((1, 1, 3, 4))
    masses[0, 0, 0] = [0.4, 0.1, 0.05, 0.5]    # per token: original 0.02, modified copy 0.1
    masses[0, 0, 1] = [0.8, 0.0, 0.0, 0.0]     # only the original
    masses[0, 0, 2] = [0.0, 0.0, 0.0, 0.0]     # all mass elsewhere (the chat template): no preference
    statistics = features.statistics_from_masses(masses, spans)
    assert statistics.shape == (1, 1, 3, len(features.STATISTICS))
    np.testing.assert_allclose(statistics[0, 0, 0], [0.4, 0.1, 0.05, 0.02 / 0.12])
    np.testing.assert_allclose(statistics[0, 0, 1, 3], 1.0)
    np.testing.assert_allclose(statistics[0, 0, 2, 3], 0.5)


# ---- the model -----------------------------------------------------------------------------------------

def test_hooked_features_equal_a_full_forward_pass_and_have_the_documented_shapes(model_and_tokenizer,
                                                                                 poetry_instances):
    import torch

    model, tokenizer = model_and_tokenizer
    instance = poetry_instances[0]
    tokenized = positions.tokenize_prompt(instance, tokenizer)
    rows = features.line_queries(instance, tokenized)
    n, grid = len(rows.positions), (model.config.num_hidden_layers, model.config.num_attention_heads)
    assert n == sum(bool(line.strip()) for line in instance.modified_lines) and rows.labels.any()
    found = features.line_features(model, tokenized.input_ids, rows, hidden_layers=[0, grid[0]], prefill_chunk=29)
    assert found.masses.shape == (n, *grid, len(features.SPAN_COLUMNS))
    assert set(found.hidden) == {0, grid[0]} and all(h.shape == (n, model.config.hidden_size)
                                                     for h in found.hidden.values())

    ids = torch.tensor([list(tokenized.input_ids[:int(rows.positions.max()) + 1])])
    with torch.inference_mode():
        full = model(ids, output_attentions=True, output_hidden_states=True)
    weights = torch.stack([layer[0] for layer in full.attentions]).double().numpy()   # [layers, heads, T, T]
    by_hand = np.stack([np.stack([weights[:, :, q, a:b].sum(axis=-1) for a, b in spans], axis=-1)
                        for q, spans in zip(rows.positions, rows.spans)])
    np.testing.assert_allclose(found.masses, by_hand, rtol=1e-5, atol=1e-7)
    for layer, states in found.hidden.items():
        np.testing.assert_allclose(states, full.hidden_states[layer][0, rows.positions].double().numpy(),
                                   rtol=1e-4, atol=1e-5)
    statistics = features.statistics_from_masses(found.masses, rows.spans)
    assert statistics.shape == (n, *grid, len(features.STATISTICS))
    assert ((statistics[..., :3] >= 0) & (statistics[..., :3] <= 1 + 1e-6)).all()
    assert ((statistics[..., 3] > 0) & (statistics[..., 3] < 1)).all()
    # Where no line is missing, the matching and the expected-next line are the same tokens.
    np.testing.assert_array_equal(statistics[~rows.labels][..., 1], statistics[~rows.labels][..., 2])


# ---- the probe -----------------------------------------------------------------------------------------

def _settings(**overrides) -> ProbeOptions:
    return ProbeOptions(**({"models": {"m": "unused"}, "data": "unused", "out": "unused", "bootstrap": 200} | overrides))


def _rows_from_attention(instances, tokenizer, attend, seed=0) -> classifier.Rows:
    """Rows whose attention is drawn by hand: random (Dirichlet) rows for every head of a 2 x 2 grid, and
    `attend(head_rows, row)` may overwrite head (1, 0); reduced by the same functions as the model's."""
    import torch

    rng = np.random.default_rng(seed)
    statistics, labels, groups = [], [], []
    for number, instance in enumerate(instances):
        rows = features.line_queries(instance, positions.tokenize_prompt(instance, tokenizer))
        n_keys = int(rows.positions.max()) + 1
        weights = rng.dirichlet(np.ones(n_keys), size=(2, 2, len(rows.positions)))     # [layers, heads, n, keys]
        for r, query in enumerate(rows.positions):
            weights[:, :, r, query + 1:] = 0.0   # causal: no query sees a later key
            weights[:, :, r] /= weights[:, :, r].sum(axis=-1, keepdims=True)
            attend(weights[1, 0, r], rows, r)
        masses = np.stack([features.span_masses(torch.from_numpy(weights[layer]), torch.from_numpy(rows.spans)).numpy()
                           for layer in range(2)], axis=1)                           # [n, layers, heads, 4]
        statistics.append(features.statistics_from_masses(masses, rows.spans))
        labels.append(rows.labels)
        groups.append(np.full(len(rows.labels), number))
    labels = np.concatenate(labels)
    return classifier.Rows(statistics=np.concatenate(statistics), hidden={}, position=np.zeros((len(labels), 2)),
                      labels=labels, groups=np.concatenate(groups), domains=np.full(len(labels), "poetry"))


def test_a_head_that_attends_only_to_the_gap_gives_auroc_one_and_random_attention_one_half(
        model_and_tokenizer, poetry_instances):
    _, tokenizer = model_and_tokenizer

    def gap_head(row, rows, r):
        # After a gap: all attention on the missing line (the gap's neighbour in the original);
        # elsewhere: all on the first token (an attention sink).
        row[:] = 0.0
        if rows.labels[r]:
            start, end = rows.spans[r, 2]
            row[start:end] = 1.0 / (end - start)
        else:
            row[0] = 1.0

    synthetic = _rows_from_attention(poetry_instances, tokenizer, gap_head)
    random = _rows_from_attention(poetry_instances, tokenizer, lambda row, rows, r: None)
    assert synthetic.labels.sum() >= 20 and (~synthetic.labels).sum() >= 200
    folds = classifier.grouped_folds(synthetic.groups, 5)
    for feature_set in ("attention", "label_free"):
        found = classifier.evaluate_feature_set(synthetic, feature_set, folds, _settings(), "synthetic")["overall"]
        assert found["auroc"] > 0.99 and found["average_precision"] > 0.95, (feature_set, found)
        chance = classifier.evaluate_feature_set(random, feature_set, folds, _settings(), "random")["overall"]
        assert abs(chance["auroc"] - 0.5) < 0.12, (feature_set, chance)
        assert chance["auroc_ci"][0] < 0.5 < chance["auroc_ci"][1]
        assert chance["average_precision"] < 3 * chance["base_rate"]
    # The probe's largest coefficient is the synthetic head's mass on the original document.
    fitted = classifier.fit_probe(synthetic.features("attention"), synthetic.labels, 1.0)
    best = classifier.top_heads(fitted[-1].coef_[0].reshape(2, 2, len(features.STATISTICS)), 3)
    assert best[0]["layer"] == 1 and best[0]["head"] == 0
    assert abs(best[0]["coefficient"]) >= abs(best[1]["coefficient"]) >= abs(best[2]["coefficient"])


def test_the_probe_on_a_random_model_reads_no_gaps(model_and_tokenizer, poetry_instances):
    model, tokenizer = model_and_tokenizer
    statistics, labels, groups, position = [], [], [], []
    for number, instance in enumerate(poetry_instances):
        tokenized = positions.tokenize_prompt(instance, tokenizer)
        rows = features.line_queries(instance, tokenized)
        found = features.line_features(model, tokenized.input_ids, rows)
        statistics.append(features.statistics_from_masses(found.masses, rows.spans))
        position.append(classifier.position_features(instance, rows))
        labels.append(rows.labels)
        groups.append(np.full(len(rows.labels), number))
    labels = np.concatenate(labels)
    rows = classifier.Rows(statistics=np.concatenate(statistics), hidden={}, position=np.concatenate(position),
                      labels=labels, groups=np.concatenate(groups), domains=np.full(len(labels), "poetry"))
    folds = classifier.grouped_folds(rows.groups, 5)
    # A random Llama's attention is mostly a function of position, and a linear probe on position alone
    # lands below 0.5 on these 24 poems (the line-position/gap relation is not linear and its fitted sign
    # flips between folds), so "reads no gaps" means: no better than chance and no better than position.
    for feature_set in ("attention", "label_free", "position"):
        found = classifier.evaluate_feature_set(rows, feature_set, folds, _settings(), "random")["overall"]
        assert found["auroc"] < 0.6 and found["auroc_ci"][0] < 0.5, (feature_set, found)
        assert found["average_precision"] < 2 * found["base_rate"], (feature_set, found)


def test_the_grouped_split_never_puts_an_instance_in_two_folds():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(23), rng.integers(1, 40, size=23))
    folds = classifier.grouped_folds(groups, 5)
    assert len(folds) == 5
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested.tolist()) == list(range(len(groups)))                 # each row tested exactly once
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert set(groups[train]) | set(groups[test]) == set(range(23))
    assert len(classifier.grouped_folds(np.array([0, 0, 1, 1]), 5)) == 2            # never more folds than instances
    with pytest.raises(ValueError, match="at least 2 instances"):
        classifier.grouped_folds(np.zeros(5, dtype=int), 5)


def test_bootstrap_metrics_are_seeded_and_resample_instances():
    labels = np.array([0, 1, 0, 0, 1, 0, 1, 0, 0, 0], dtype=bool)
    scores = np.array([0.1, 0.9, 0.3, 0.2, 0.4, 0.5, 0.8, 0.0, 0.35, 0.6])
    groups = np.repeat(np.arange(5), 2)
    first = classifier.bootstrap_metrics(labels, scores, groups, np.random.default_rng(7), 300)
    assert first == classifier.bootstrap_metrics(labels, scores, groups, np.random.default_rng(7), 300)
    from sklearn.metrics import roc_auc_score
    assert first["auroc"] == roc_auc_score(labels, scores) and first["n_instances"] == 5 and first["n_gaps"] == 3
    assert first["auroc_ci"][0] <= first["auroc"] <= first["auroc_ci"][1] <= 1.0
    assert 0 < first["bootstrap_resamples_used"] <= 300
    one_class = classifier.bootstrap_metrics(np.zeros(4, dtype=bool), np.arange(4.0), np.arange(4), np.random.default_rng(0), 50)
    assert one_class["auroc"] is None and one_class["base_rate"] == 0.0


# ---- command line --------------------------------------------------------------------------------------

def _gaps_with_a_line_after(instance: Instance) -> int:
    """Counted from the indices alone: runs of omitted lines followed by a non-blank kept line."""
    omitted, count = set(instance.omitted_indices), 0
    for i in instance.omitted_indices:
        if i + 1 in omitted:
            continue
        count += any(j not in omitted and instance.original_lines[j].strip()
                     for j in range(i + 1, len(instance.original_lines)))
    return count


def _one_error_line(stderr: str) -> str:
    (line,) = [line for line in stderr.splitlines() if line.strip()]   # exactly one line
    assert line.startswith("probe: error: "), line
    return line


def test_cli_end_to_end_with_two_models(tiny_llama_dir, second_tiny_llama_dir, mixed_instances, tmp_path, capsys):
    data = tmp_path / "mixed.jsonl"
    needle = generate_instances("poetry", "needle", 1, "test", seed=4, config=SHORT["poetry"], progress=False)
    write_jsonl(data, mixed_instances + needle)
    out = tmp_path / "out"
    args = ["--models", f"a={tiny_llama_dir}", f"b={second_tiny_llama_dir}", "--data", str(data), "--out", str(out),
            "--hidden-layer", "1", "--bootstrap", "20", "--folds", "3", "--top-heads", "5"]
    assert probe_cli.main(args) == 0
    first_bytes = (out / "summary.json").read_bytes()
    assert probe_cli.main(args) == 0
    assert (out / "summary.json").read_bytes() == first_bytes          # same seed, same bytes
    assert "AUROC" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["auroc.png", "coefficients.png", "summary.json"]
    assert all((out / name).read_bytes().startswith(b"\x89PNG") for name in ("auroc.png", "coefficients.png"))

    summary = json.loads(first_bytes)
    assert summary["command"].endswith(" ".join(args[-6:]))
    assert summary["n_instances"] == 12 and summary["n_needle_instances_skipped"] == 1
    assert summary["n_rows"] == sum(sum(bool(l.strip()) for l in i.modified_lines) for i in mixed_instances)
    assert summary["n_gaps"] == sum(_gaps_with_a_line_after(i) for i in mixed_instances)
    assert summary["base_rate"] == round(summary["n_gaps"] / summary["n_rows"], 6)
    assert list(summary["models"]) == ["a", "b"] and summary["models"]["a"]["n_layers"] == 2
    for label in ("a", "b"):
        result = summary["results"][label]
        assert list(result["feature_sets"]) == ["attention", "label_free", "hidden_1", "position"]
        attention_set = result["feature_sets"]["attention"]
        assert attention_set["n_features"] == 2 * 2 * len(features.STATISTICS)
        assert result["feature_sets"]["hidden_1"]["n_features"] == 128
        assert result["feature_sets"]["position"]["n_features"] == 2
        assert list(attention_set["per_domain"]) == list(DOMAINS)
        assert [list(row) for row in attention_set["domain_transfer"].values()] == [list(DOMAINS)] * 3
        for cell in [attention_set["overall"], *attention_set["per_domain"].values()]:
            assert 0 <= cell["auroc"] <= 1 and cell["auroc_ci"][0] <= cell["auroc_ci"][1]
            assert 0 < cell["average_precision"] <= 1
        heads = result["top_heads"]
        assert len(heads) == 5 and [abs(h["coefficient"]) for h in heads] == sorted(
            (abs(h["coefficient"]) for h in heads), reverse=True)
        assert all(0 <= h["mean_after_gap"] <= 1 and 0 <= h["mean_elsewhere"] <= 1 for h in heads)
    transfer = summary["model_transfer"]["attention"]
    assert [list(row) for row in transfer.values()] == [["a", "b"], ["a", "b"]]
    for label in ("a", "b"):   # the diagonal is each model's own cross-validation: the same scores
        assert transfer[label][label]["auroc"] == summary["results"][label]["feature_sets"]["attention"]["overall"]["auroc"]


def test_cli_bad_model_or_data_exits_2_with_one_line_and_no_output(tiny_llama_dir, second_tiny_llama_dir, mixed_instances,
                                                         tmp_path, capsys):
    out = tmp_path / "out"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(mixed_instances[0].to_dict()) + "\n{not json\n")
    needles = tmp_path / "needles.jsonl"
    write_jsonl(needles, generate_instances("poetry", "needle", 2, "test", seed=4, config=SHORT["poetry"],
                                            progress=False))
    not_a_model = tmp_path / "folder"
    not_a_model.mkdir()
    good = tmp_path / "good.jsonl"
    write_jsonl(good, mixed_instances)
    cases = [
        (["--model", str(tiny_llama_dir), "--data", str(empty)], str(empty)),
        (["--model", str(tiny_llama_dir), "--data", str(broken)], f"{broken}:2"),
        (["--model", str(tiny_llama_dir), "--data", str(needles)], "no omission or placeholder instances"),
        (["--model", str(not_a_model), "--data", str(good)], str(not_a_model)),
        (["--models", f"a={tiny_llama_dir}", f"b={not_a_model}", "--data", str(good)], str(not_a_model)),
        (["--models", f"a={tiny_llama_dir}", "b", "--data", str(good)], "LABEL=PATH"),
        (["--model", str(tiny_llama_dir), "--data", str(good), "--hidden-layer", "3"], "2 layers"),
    ]
    for args, named in cases:
        assert probe_cli.main(args + ["--out", str(out)]) == 2, args
        assert named in _one_error_line(capsys.readouterr().err), args
        assert not out.exists()
    # The same through the module's own entry point, as the README runs it.
    missing = tmp_path / "no-such-model"
    command = [sys.executable, "-m", "analysis.probe", "--model", str(missing), "--data", str(good),
               "--out", str(out)]
    finished = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert (finished.returncode, not out.exists()) == (2, True)
    assert str(missing) in _one_error_line(finished.stderr)


# ---- the probe against the answers -------------------------------------------------------------------

def test_readout_counts_gap_lines_found_by_the_probe_and_named_in_the_answer(model_and_tokenizer):
    from analysis.probe import readout

    _, tokenizer = model_and_tokenizer
    original = ["alpha line", "bravo line", "charlie line", "delta line", "echo line", "foxtrot line", "golf line"]
    # Two gaps with a line after them: "bravo" (before "charlie") and "echo" + "foxtrot" (before "golf").
    instance = _instance("omission", original, ["alpha line", "charlie line", "delta line", "golf line"],
                         omitted=[1, 4, 5])
    rows = features.line_queries(instance, positions.tokenize_prompt(instance, tokenizer))
    assert rows.labels.tolist() == [False, True, False, True]
    # The probe ranks "charlie" (a gap line) first and "alpha" (not one) second: with g = 2 it finds one gap.
    scores = np.array([0.8, 0.9, 0.1, 0.2])
    # The answer names "foxtrot line" only: the second gap, which the probe misses.
    answer = readout.instance_readout(instance, rows, scores, 0.5, {"foxtrot line"})
    assert (answer.found_named, answer.found_not_named, answer.named_not_found, answer.neither) == (0, 1, 1, 0)
    assert answer.n_gap_lines == 2 and answer.readability == 0.75 and answer.f1 == 0.5   # 3 of 4 pairs
    perfect = readout.instance_readout(instance, rows, np.array([0.0, 1.0, 0.1, 0.9]), 1.0,
                                       {"bravo line", "echo line"})
    assert (perfect.found_named, perfect.readability) == (2, 1.0)
    no_gap = _instance("omission", ["a one", "b two"], ["a one", "b two"])
    none = readout.instance_readout(no_gap, features.line_queries(no_gap, positions.tokenize_prompt(no_gap, tokenizer)),
                                    np.array([0.3, 0.1]), 1.0, set())
    assert none.readability is None and none.n_gap_lines == 0


def test_spearman_paired_difference_and_shares_against_their_definitions():
    from scipy.stats import spearmanr

    from analysis.probe import readout

    x = np.array([0.2, 0.5, 0.5, 0.9, 0.1, 0.7])
    y = np.array([0.0, 0.4, 0.3, 1.0, 0.0, 0.2])
    assert readout.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert readout.spearman(x, np.zeros(6)) is None and readout.spearman(x[:2], y[:2]) is None
    found = readout.spearman_with_ci(x, y, np.random.default_rng(0), 200)
    assert found["spearman_rho_ci"][0] <= found["spearman_rho"] <= found["spearman_rho_ci"][1]
    assert found == readout.spearman_with_ci(x, y, np.random.default_rng(0), 200)
    share = readout.fraction_with_ci(np.array([1, 0, 2]), np.array([2, 1, 2]), np.random.default_rng(0), 200)
    assert share["value"] == 3 / 5 and share["ci"][0] <= 0.6 <= share["ci"][1]
    assert readout.fraction_with_ci(np.zeros(2), np.zeros(2), np.random.default_rng(0), 10)["value"] is None

    labels = np.array([0, 1, 0, 0, 1, 0, 1, 0, 0, 0], dtype=bool)
    groups = np.repeat(np.arange(5), 2)
    scores = np.array([0.1, 0.9, 0.3, 0.2, 0.4, 0.5, 0.8, 0.0, 0.35, 0.6])
    same = classifier.paired_auroc_difference(labels, scores, scores, groups, np.random.default_rng(1), 100)
    assert same["difference"] == 0 and same["ci"] == [0, 0] and same["p_value"] == 1.0
    better = classifier.paired_auroc_difference(labels, scores, labels + 0.0, groups, np.random.default_rng(1), 100)
    from sklearn.metrics import roc_auc_score
    assert better["difference"] == pytest.approx(1 - roc_auc_score(labels, scores)) and better["ci"][0] >= 0


def _lm_eval_samples(path: Path, instances, answer_for) -> None:
    """Logged samples as lm-eval writes them with --log_samples (the fields the readers use), scored by the
    task's own scoring function."""
    from absence_tasks.scoring import score_response

    with path.open("w") as f:
        for number, instance in enumerate(instances):
            response = answer_for(number, instance)
            score = score_response(instance, response)
            f.write(json.dumps({"doc_id": number, "doc": instance.to_dict(), "target": "\n".join(instance.answer_lines),
                                "resps": [[response]], "filtered_resps": [response], "filter": "none",
                                "f1": score.f1, "precision": score.precision, "recall": score.recall}) + "\n")


def test_cli_with_answers_reports_readability_against_f1(tiny_llama_dir, second_tiny_llama_dir, mixed_instances,
                                                         tmp_path, capsys):
    data = tmp_path / "mixed.jsonl"
    write_jsonl(data, mixed_instances)
    answers = tmp_path / "answers-a"
    answers.mkdir()
    # Every other instance answered perfectly, the rest with nothing: F1 1 and 0, every gap of the first named.
    _lm_eval_samples(answers / "samples_absence_mixed_2026-12-02T00-00-00.jsonl", mixed_instances,
                     lambda number, instance: "\n".join(instance.answer_lines) if number % 2 == 0 else "")
    out = tmp_path / "out"
    args = ["--models", f"a={tiny_llama_dir}", f"b={second_tiny_llama_dir}", "--data", str(data), "--out", str(out),
            "--bootstrap", "20", "--folds", "3", "--answers", f"a={answers}"]
    assert probe_cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "b - a: attention probe AUROC" in printed and "a: readability vs F1 Spearman rho" in printed
    assert sorted(p.name for p in out.iterdir()) == ["auroc.png", "coefficients.png", "readout.png", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    found = summary["readout"]["a"]
    assert list(summary["readout"]) == ["a"] and found["feature_set"] == "attention"
    assert found["n_instances"] == 12 and found["mean_f1"] == 0.5
    per_instance = found["per_instance"]
    assert [r["id"] for r in per_instance] == [i.id for i in mixed_instances]
    assert [r["f1"] for r in per_instance] == [1.0 if n % 2 == 0 else 0.0 for n in range(12)]
    named = [r["found_named"] + r["named_not_found"] for r in per_instance]
    assert named == [r["n_gap_lines"] if n % 2 == 0 else 0 for n, r in enumerate(per_instance)]
    lines = found["gap_lines"]
    assert lines["n"] == summary["n_gaps"] == sum(r["n_gap_lines"] for r in per_instance)
    assert lines["found_named"] + lines["found_not_named"] + lines["named_not_found"] + lines["neither"] == lines["n"]
    assert found["readability_vs_f1"]["overall"]["n_instances"] == found["n_instances_with_readability"]
    difference = summary["model_differences"]["attention"]["b"]
    auroc = {label: summary["results"][label]["feature_sets"]["attention"]["overall"]["auroc"] for label in "ab"}
    assert difference["difference"] == pytest.approx(auroc["b"] - auroc["a"], abs=2e-6)

    # Answers that miss a probed instance, or of another model label, or of other instances: one line, no output.
    partial = tmp_path / "partial.jsonl"
    _lm_eval_samples(partial, mixed_instances[:-1], lambda number, instance: "")
    other = tmp_path / "other.jsonl"
    _lm_eval_samples(other, mixed_instances, lambda number, instance: "")
    first, *rest = other.read_text().splitlines()
    first = json.loads(first)
    first["doc"]["modified_lines"] = first["doc"]["original_lines"]   # the same id, another document
    other.write_text("\n".join([json.dumps(first), *rest]) + "\n")
    fresh = tmp_path / "fresh"
    for extra, named in [(["--answers", f"a={partial}"], f"no answer to instance {mixed_instances[-1].id}"),
                         (["--answers", f"c={answers}"], "--answers names a model that is not probed"),
                         (["--answers", f"a={other}"], f"{other}: instance {mixed_instances[0].id} is not the probed"),
                         (["--answers", f"a={tmp_path / 'nothing'}"], "no such file or folder")]:
        base = ["--models", f"a={tiny_llama_dir}", "--data", str(data), "--out", str(fresh)]
        assert probe_cli.main(base + extra) == 2, extra
        assert named in _one_error_line(capsys.readouterr().err), extra
        assert not fresh.exists()
