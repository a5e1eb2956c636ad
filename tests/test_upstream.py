"""Upstream AbsenceBench format: round trips, both namings, upstream's own quirks, bad records."""

import json

import datasets
import pytest

from absence_tasks.generate import SHARED_PRS, generate_instances
from absence_tasks.schema import DOMAINS, VARIANTS, DataError
from absence_tasks.scoring import oracle_answer, score_response
from absence_tasks.upstream import instances_from_hf_rows, read_upstream, to_upstream_record, write_upstream


def same_task(a, b):
    return (a.domain, a.variant, a.original_lines, a.modified_lines, a.omitted_indices, a.inserted_indices,
            a.answer_lines) == (b.domain, b.variant, b.original_lines, b.modified_lines, b.omitted_indices,
                                b.inserted_indices, b.answer_lines)


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_round_trip(tmp_path, domain, variant):
    if domain == "github_prs" and not SHARED_PRS.is_dir():
        pytest.skip("no ../shared/data/prs")
    instances = generate_instances(domain, variant, 8, "test", seed=0, progress=False)
    path = tmp_path / f"{domain}.jsonl"
    write_upstream(path, instances)
    first_bytes = path.read_bytes()
    back = read_upstream(path, domain=domain if variant == "needle" else None)
    assert len(back) == len(instances)
    assert all(same_task(a, b) for a, b in zip(instances, back))
    for inst in back:
        assert score_response(inst, oracle_answer(inst)).f1 == 1.0
    write_upstream(path, back)
    assert path.read_bytes() == first_bytes


def test_per_domain_field_names():
    poem = generate_instances("poetry", "omission", 1, progress=False)[0]
    assert {"original_poem", "modified_poem", "omitted_line_indices"} <= set(to_upstream_record(poem))
    numbers = generate_instances("numerical", "omission", 1, progress=False)[0]
    record = to_upstream_record(numbers)
    assert {"original_sequence", "user_sequence", "omitted_mask", "omitted_sequence", "metadata"} <= set(record)
    # Upstream's mask is True where the element was kept.
    assert [i for i, kept in enumerate(record["omitted_mask"]) if not kept] == list(numbers.omitted_indices)


def test_generic_naming_and_upstreams_pr_quirks(tmp_path):
    # Upstream's PR generator keeps the diff's trailing newline in the original and drops every line
    # that occurs twice from the modified diff; neither is part of the answer.
    original = "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1,4 +1,5 @@\n a = 1\n+\n+b = 2\n+\n c = 3\n"
    modified = "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1,4 +1,5 @@\n a = 1\n c = 3"
    row = {"id": 4, "original_context": original, "modified_context": modified,
           "omitted_context": ["+b = 2"], "omitted_index": [6], "metadata": {"pr_number": 1}}
    path = tmp_path / "github_prs.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (inst,) = read_upstream(path, domain="github_prs")
    assert inst.answer_lines == ["+b = 2"]
    assert inst.metadata["dropped_context_indices"] == [5, 7, 9]
    assert score_response(inst, oracle_answer(inst)).f1 == 1.0
    with pytest.raises(DataError, match="github_prs.jsonl:1: cannot tell the domain"):
        read_upstream(path)


def test_poetry_placeholder_detected():
    row = {"id": 1, "original_poem": "a\nb\nc", "modified_poem": "a\n<missing line>\nc", "omitted_line_indices": [1]}
    (inst,) = instances_from_hf_rows([row], "poetry")
    assert inst.variant == "placeholder" and inst.answer_lines == ["b"]


@pytest.mark.parametrize("row, message", [
    ({"id": 1, "original_poem": "a\nb\nc", "modified_poem": "a\nc", "omitted_line_indices": [2]},
     "first difference at original line 1"),
    ({"id": 1, "original_diff": "+a\n+b\n c", "modified_diff": "+a\n c", "omitted_lines": ["+a"], "omitted_index": [1]},
     "disagrees with the lines at the omitted indices"),
    ({"id": 1, "original_poem": "a\nb", "modified_poem": "a"}, "missing omitted indices"),
    ({"id": 1, "original_poem": "a\nb", "modified_poem": "a", "omitted_line_indices": [5]}, "out of range"),
    ({"id": 1, "original_sequence": "1\n2\n3", "user_sequence": "1\n3", "omitted_mask": [True, False]},
     "one boolean per original element"),
])
def test_inconsistent_records_name_file_and_line(tmp_path, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": 0, "original_poem": "x\\ny", "modified_poem": "x", "omitted_line_indices": [1]}\n'
                    + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=f"bad.jsonl:2: .*{message}"):
        read_upstream(path)


def test_malformed_line_and_empty_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": 0, "original_poem": "x\\ny", "modified_poem": "x", "omitted_line_indices": [1]}\n{nope\n')
    with pytest.raises(DataError, match="bad.jsonl:2: malformed JSON"):
        read_upstream(path)
    path.write_text("")
    with pytest.raises(DataError, match="no records"):
        read_upstream(path)


def test_mixed_domains_refused(tmp_path):
    mixed = generate_instances("poetry", "omission", 1, progress=False) + \
        generate_instances("numerical", "omission", 1, progress=False)
    with pytest.raises(DataError, match="one domain each"):
        write_upstream(tmp_path / "x.jsonl", mixed)
    assert not (tmp_path / "x.jsonl").exists()


def test_hub_rows_from_a_local_dataset():
    """The hub loader's conversion, fed a local `datasets.Dataset` in the hub's (generic) format."""
    instances = generate_instances("numerical", "omission", 4, progress=False)
    rows = [{"id": k, "original_context": i.original_text, "modified_context": i.modified_text,
             "omitted_context": i.answer_lines, "omitted_index": list(i.omitted_indices),
             "metadata": json.dumps({"n": len(i.original_lines)})} for k, i in enumerate(instances)]
    local = datasets.Dataset.from_list(rows)
    back = instances_from_hf_rows(local, "numerical")
    assert [b.answer_lines for b in back] == [i.answer_lines for i in instances]
    assert back[0].id == "upstream-numerical-0"
