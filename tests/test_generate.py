"""Generators: determinism, split disjointness, omission rules, and the oracle's 1.0 on everything."""

import dataclasses
import json

import pytest

from absence_tasks.generate import (choose_omissions, default_config, generate_instances,
                                    split_for_source)
from absence_tasks.schema import DOMAINS, PLACEHOLDER, VARIANTS, DataError, dumps_jsonl
from absence_tasks.scoring import normalize_line, oracle_answer, score_response
from absence_tasks.sources import prs

def jsonl(instances):
    return dumps_jsonl(i.to_dict() for i in instances)


def assert_oracle_solves(instances):
    for inst in instances:
        score = score_response(inst, oracle_answer(inst))
        assert score.f1 == 1.0, (inst.id, score)


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_embedded_sources_all_variants_seeded_and_solvable(domain, variant):
    first = generate_instances(domain, variant, 25, "test", seed=3, progress=False)
    again = generate_instances(domain, variant, 25, "test", seed=3, progress=False)
    other = generate_instances(domain, variant, 25, "test", seed=4, progress=False)
    assert len(first) == 25
    assert jsonl(first) == jsonl(again)
    assert jsonl(first) != jsonl(other)
    assert_oracle_solves(first)
    for inst in first:
        assert inst.answer_lines, "at least one line is omitted or inserted"
        assert split_for_source(inst.metadata["source_id"]) == "test"
        if variant == "omission":
            assert 0 < len(inst.modified_lines) < len(inst.original_lines)


@pytest.mark.parametrize("domain", DOMAINS)
def test_splits_never_share_a_source(domain):
    train = generate_instances(domain, "omission", 150, "train", seed=0, progress=False)
    test = generate_instances(domain, "omission", 60, "test", seed=0, progress=False)
    train_sources = {i.metadata["source_id"] for i in train}
    test_sources = {i.metadata["source_id"] for i in test}
    assert train_sources and test_sources
    assert not train_sources & test_sources


def test_split_assignment_is_a_stable_hash():
    assert split_for_source("huggingface/trl#6509") == split_for_source("huggingface/trl#6509")
    counts = {s: 0 for s in ("train", "validation", "test")}
    for k in range(5000):
        counts[split_for_source(f"src{k}")] += 1
    assert 0.77 < counts["train"] / 5000 < 0.83 and 0.08 < counts["test"] / 5000 < 0.12


def test_omission_and_placeholder_ask_about_the_same_lines():
    omission = generate_instances("poetry", "omission", 10, "test", seed=1, progress=False)
    placeholder = generate_instances("poetry", "placeholder", 10, "test", seed=1, progress=False)
    for a, b in zip(omission, placeholder):
        assert a.original_lines == b.original_lines and a.omitted_indices == b.omitted_indices
        assert [b.modified_lines[i] for i in b.omitted_indices] == [PLACEHOLDER] * len(b.omitted_indices)


def test_needles_are_new_lines():
    for inst in generate_instances("poetry", "needle", 10, "test", seed=2, progress=False):
        original = {normalize_line(x) for x in inst.original_lines}
        assert all(normalize_line(x) not in original for x in inst.answer_lines)
        rest = [x for i, x in enumerate(inst.modified_lines) if i not in set(inst.inserted_indices)]
        assert tuple(rest) == inst.original_lines


@pytest.mark.parametrize("system", ["base10", "binary", "hexadecimal", "words", "roman"])
def test_every_number_system(system):
    cfg = dataclasses.replace(default_config("numerical"), number_systems=(system,))
    for variant in VARIANTS:
        instances = generate_instances("numerical", variant, 8, "test", seed=0, config=cfg, progress=False)
        assert_oracle_solves(instances)
        assert all(i.metadata["number_system"] == system for i in instances)


def test_choose_omissions_at_least_one_never_all():
    import random

    rng = random.Random(0)
    for _ in range(200):
        chosen = choose_omissions(3, [0, 1, 2], rng, 0.999, None)
        assert 1 <= len(chosen) < 3
        assert len(choose_omissions(10, [4], rng, 0.001, None)) == 1
    assert len(choose_omissions(10, list(range(10)), rng, 0.5, 2)) == 2


def test_poem_rules_blank_and_repeated_lines_are_never_omitted(tmp_path):
    refrain = "Nevermore, quoth the raven"
    lines = []
    for stanza in range(30):
        lines += [f"stanza {stanza} line {k} of the ballad" for k in range(3)] + [refrain, ""]
    folder = tmp_path / "poems"
    folder.mkdir()
    for k in range(40):
        (folder / f"ballad{k}.txt").write_text("\n".join(f"{x} ({k})" if x and x != refrain else x for x in lines))
    cfg = dataclasses.replace(default_config("poetry"), omission_probs=(0.5,), max_lines=200)
    instances = generate_instances("poetry", "omission", 30, "train", seed=0, config=cfg, poems_path=folder,
                                   progress=False)
    assert_oracle_solves(instances)
    for inst in instances:
        assert all(inst.original_lines[i].strip() for i in inst.omitted_indices)
        assert refrain not in inst.answer_lines


def test_pr_omissions_are_changed_lines_only_and_context_deletion_is_unscored():
    cfg = dataclasses.replace(default_config("github_prs"), context_deletion_prob=0.3)
    instances = generate_instances("github_prs", "omission", 30, "test", seed=0, config=cfg, progress=False)
    assert_oracle_solves(instances)
    assert any(i.metadata.get("dropped_context_indices") for i in instances)
    for inst in instances:
        kinds = prs.classify_diff_lines(inst.original_lines)
        assert {kinds[i] for i in inst.omitted_indices} <= {"added", "removed"}
        assert {kinds[i] for i in inst.metadata.get("dropped_context_indices", [])} <= {"context"}


def test_prs_mined_from_a_local_git_repository(git_repo):
    instances = generate_instances("github_prs", "omission", 12, "train", seed=0, git_repo=git_repo, progress=False)
    assert_oracle_solves(instances)
    assert all(i.metadata["repo"] == git_repo.name and i.metadata["pr_number"] >= 100 for i in instances)
    needles = generate_instances("github_prs", "needle", 5, "train", seed=0, git_repo=git_repo, progress=False)
    assert_oracle_solves(needles)


def test_upstream_preset_lengths():
    for domain, low in (("numerical", 50), ("poetry", 100)):
        inst = generate_instances(domain, "omission", 2, "test", seed=0, preset="upstream", progress=False)
        assert all(len(i.original_lines) >= low for i in inst)
        assert_oracle_solves(inst)


@pytest.mark.parametrize("kwargs, message", [
    ({"domain": "sonnets"}, "unknown domain"),
    ({"variant": "shuffle"}, "unknown variant"),
    ({"n": 0}, "n must be"),
    ({"n": 10**9}, "n must be"),
])
def test_bad_arguments(kwargs, message):
    args = {"domain": "numerical", "variant": "omission", "n": 5, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate_instances(args["domain"], args["variant"], args["n"], progress=False)


def test_absurd_document_size_is_refused():
    cfg = dataclasses.replace(default_config("numerical"), max_lines=10**7)
    with pytest.raises(ValueError, match="absurd"):
        generate_instances("numerical", "omission", 1, config=cfg, progress=False)


@pytest.mark.parametrize("content, message", [
    (b"", "fewer than 2 non-blank lines"),
    (b"one single line\n", "fewer than 2 non-blank lines"),
    (b"caf\xe9 au lait\nline two\n", "not UTF-8"),
])
def test_bad_poem_files(tmp_path, content, message):
    path = tmp_path / "poem.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        generate_instances("poetry", "omission", 1, poems_path=path, progress=False)
    assert str(path) in str(err.value)


def test_poem_jsonl_records(tmp_path):
    path = tmp_path / "poems.jsonl"
    rows = [{"id": k, "lines": [f"poem {k} verse {j}" for j in range(25)]} for k in range(60)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    instances = generate_instances("poetry", "placeholder", 5, "train", seed=0, poems_path=path, progress=False)
    assert_oracle_solves(instances)
    path.write_text('{"id": 1, "title": "no text"}\n')
    with pytest.raises(DataError, match=r"poems.jsonl:1: poem record needs"):
        generate_instances("poetry", "omission", 1, poems_path=path, progress=False)
