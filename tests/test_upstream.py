"""Upstream AbsenceBench JSONL: round trips of hand-built instances, both namings, records as upstream's
generators write them (with their quirks), the hub conversion, and records that do not check out."""

import json
import re
import subprocess

import dataclasses

import datasets
import pytest

from absence_tasks.generate import default_config, generate_instances
from absence_tasks.schema import DOMAINS, PLACEHOLDER, VARIANTS, DataError, Instance
from absence_tasks.scoring import oracle_answer, score_response
from absence_tasks.upstream import (from_upstream_record, instances_from_hf_rows, read_upstream,
                                    to_upstream_record, write_upstream)

POEM = (
    "The kettle sings before the dawn,",
    "the window fogs with breath and steam;",
    "a sparrow tests the frosted lawn",
    "and leaves a track like half a dream.",
    "",
    "The milk van hums along the lane,",
    "its bottles knocking, glass on glass;",
    "the café lifts its shutter’s chain",
    "and waits for morning light to pass.",
    "We drink our tea and let it pass.",
)
NUMBERS = tuple(str(3077 - 7 * k) for k in range(12))
DIFF = (
    "diff --git a/src/cache.py b/src/cache.py",
    "index 3f2a1b9..8c4d2e0 100644",
    "--- a/src/cache.py",
    "+++ b/src/cache.py",
    "@@ -10,5 +10,8 @@ class Cache:",
    "     def get(self, key):",
    "-        return self._store[key]",
    "+        if key not in self._store:",
    "+            raise KeyError(f\"cache miss: {key}\")",
    "+        return self._store[key]",
    "     def put(self, key, value):",
    "-        self._store[key] = value",
    "+        self._store[key] = value",
    "+        self._hits = 0",
    "     def clear(self):",
)
# (lines, omitted indices, a context line deleted unscored, two needles)
DOCUMENTS = {
    "poetry": (POEM, (2, 5), None, ("Hermione Granger is a character in the novels", "the owl post came at noon")),
    "numerical": (NUMBERS, (0, 4, 9), None, ("3078", "2991")),
    "github_prs": (DIFF, (7, 13), 10, ("+        log.debug(\"get %s\", key)", "-        self._hits += 1")),
}


def hand_built(domain: str, variant: str) -> Instance:
    lines, omitted, context, (first, second) = DOCUMENTS[domain]
    if variant == "needle":
        modified = [*lines[:3], first, *lines[3:7], second, *lines[7:]]
        return Instance(f"{domain}-needle-1", domain, variant, "test", lines, modified, (), (3, 8), {"note": "hand-built"})
    dropped = [] if context is None else [context]
    kept = [(i, x) for i, x in enumerate(lines) if i not in dropped]
    if variant == "placeholder":
        modified = [PLACEHOLDER if i in omitted else x for i, x in kept]
    else:
        modified = [x for i, x in kept if i not in omitted]
    metadata = {"note": "hand-built", **({"dropped_context_indices": dropped} if dropped else {})}
    return Instance(f"{domain}-{variant}-1", domain, variant, "test", lines, modified, omitted, (), metadata)


def same_task(a: Instance, b: Instance) -> bool:
    fields = ("domain", "variant", "original_lines", "modified_lines", "omitted_indices", "inserted_indices",
              "answer_lines")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


def assert_oracle_solves(instances):
    for inst in instances:
        assert score_response(inst, oracle_answer(inst)).f1 == 1.0, inst.id


def write_records(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def generic_row(inst: Instance, row_id) -> dict:
    """A record in the hub's naming, which says nothing about the domain."""
    return {"id": row_id, "original_context": inst.original_text, "modified_context": inst.modified_text,
            "omitted_context": inst.answer_lines, "omitted_index": list(inst.omitted_indices),
            "metadata": {"omission_prob": 0.1}}


# ---- round trips ------------------------------------------------------------------------------

@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_hand_built_instances_survive_write_and_read(tmp_path, domain, variant):
    inst = hand_built(domain, variant)
    twin = dataclasses.replace(inst, id=f"{inst.id}-twin")  # ids are unique within a file
    path = tmp_path / f"{domain}_{variant}.jsonl"
    write_upstream(path, [inst, twin])
    written = path.read_bytes()
    back = read_upstream(path)  # domain and variant come from the records
    assert len(back) == 2 and all(same_task(inst, b) for b in back)
    assert back[0].id == f"upstream-{domain}-{inst.id}"
    assert back[0].metadata["upstream_id"] == inst.id and back[0].metadata["source_file"] == path.name
    assert back[0].metadata["note"] == "hand-built"
    assert_oracle_solves(back)
    # Same instances, same bytes; and what was read writes back to the very same file.
    write_upstream(tmp_path / "again.jsonl", [inst, twin])
    assert (tmp_path / "again.jsonl").read_bytes() == written
    write_upstream(path, back)
    assert path.read_bytes() == written


@pytest.mark.parametrize("domain", DOMAINS)
def test_generated_instances_survive_write_and_read(tmp_path, domain):
    # Diffs with upstream's context deletion too, so the unscored deleted lines make the round trip.
    config = dataclasses.replace(default_config(domain), context_deletion_prob=0.2) if domain == "github_prs" else None
    unscored_deletions = 0
    for variant in VARIANTS:
        instances = generate_instances(domain, variant, 6, "test", seed=5, config=config, progress=False)
        path = tmp_path / f"{domain}_{variant}.jsonl"
        write_upstream(path, instances)
        back = read_upstream(path)
        assert len(back) == 6 and all(same_task(a, b) for a, b in zip(instances, back))
        assert_oracle_solves(back)
        if variant != "needle":
            unscored_deletions += sum(len(b.metadata.get("dropped_context_indices", ())) for b in back)
    assert (unscored_deletions > 0) == (domain == "github_prs")


def test_written_records_use_upstreams_field_names(tmp_path):
    records = {}
    for domain in DOMAINS:
        for variant in ("omission", "needle"):
            path = write_upstream_one(tmp_path, hand_built(domain, variant))
            records[domain, variant] = json.loads(path.read_text(encoding="utf-8"))
    assert list(records["poetry", "omission"]) == ["id", "original_poem", "modified_poem", "omitted_line_indices",
                                                   "metadata"]
    assert records["poetry", "omission"]["omitted_line_indices"] == [2, 5]
    numbers = records["numerical", "omission"]
    assert list(numbers) == ["id", "original_sequence", "user_sequence", "omitted_mask", "omitted_sequence", "metadata"]
    # Upstream's mask is True where the element was KEPT.
    assert numbers["omitted_mask"] == [i not in (0, 4, 9) for i in range(12)]
    assert numbers["omitted_sequence"] == ["3077", "3049", "3014"]
    assert numbers["original_sequence"] == list(NUMBERS)
    pr = records["github_prs", "omission"]
    assert list(pr) == ["id", "original_diff", "modified_diff", "omitted_lines", "omitted_index", "metadata"]
    assert pr["omitted_lines"] == ["+        if key not in self._store:", "+        self._hits = 0"]
    assert pr["omitted_index"] == [7, 13]  # the deleted context line stays unlisted, as upstream leaves it
    assert "     def put(self, key, value):" not in pr["modified_diff"].split("\n")
    for domain in DOMAINS:
        needle = records[domain, "needle"]
        assert list(needle) == ["id", "original_context", "modified_context", "needles", "metadata"]
        assert needle["needles"] == list(DOCUMENTS[domain][3]) and needle["metadata"]["task_type"] == domain
    raw = (tmp_path / "poetry_omission.jsonl").read_text(encoding="utf-8")
    assert "café" in raw and "\\u" not in raw


def write_upstream_one(tmp_path, inst):
    path = tmp_path / f"{inst.domain}_{inst.variant}.jsonl"
    write_upstream(path, [inst])
    return path


# ---- reading upstream's files -------------------------------------------------------------------

@pytest.mark.parametrize("domain", DOMAINS)
def test_generic_naming_needs_the_domain(tmp_path, domain):
    inst = hand_built(domain, "omission")
    path = write_records(tmp_path / "hub_style.jsonl", [generic_row(inst, 7), generic_row(inst, 8)])
    back = read_upstream(path, domain=domain, split="validation")
    assert [b.id for b in back] == [f"upstream-{domain}-7", f"upstream-{domain}-8"]
    assert all(same_task(inst, b) and b.split == "validation" for b in back)
    assert back[0].metadata["omission_prob"] == 0.1
    assert_oracle_solves(back)
    with pytest.raises(DataError, match=r"hub_style\.jsonl:1: cannot tell the domain"):
        read_upstream(path)


def test_poetry_as_upstreams_generator_writes_it(tmp_path):
    # Upstream's poetry generator may omit a blank line, which its scorer skips and no answer can list.
    record = {"id": 31, "original_poem": "\n".join(POEM), "modified_poem": "\n".join(POEM[:4] + POEM[5:9]),
              "omission_probability": 0.1, "omitted_line_indices": [4, 9], "title": "Morning"}
    (inst,) = read_upstream(write_records(tmp_path / "poetry_default.jsonl", [record]))
    assert (inst.variant, inst.omitted_indices, inst.answer_lines) == ("omission", (9,), [POEM[9]])
    assert inst.metadata["dropped_context_indices"] == [4]
    assert inst.metadata["title"] == "Morning" and inst.metadata["omission_probability"] == 0.1
    assert_oracle_solves([inst])
    # Written back, the blank line is listed again: upstream's format has no other way to say it is gone.
    assert to_upstream_record(inst)["omitted_line_indices"] == [4, 9]


def test_numerical_as_upstreams_generator_writes_it(tmp_path):
    values = [3077 - 7 * k for k in range(12)]
    mask = [k not in (1, 6) for k in range(12)]
    record = {"id": 5, "original_sequence": values, "user_sequence": [v for v, kept in zip(values, mask) if kept],
              "omitted_mask": mask, "omitted_sequence": [values[1], values[6]],
              "metadata": {"task_type": "numerical", "n_numbers": 12, "order": "descending", "system": "base10"}}
    (inst,) = read_upstream(write_records(tmp_path / "numerical_default.jsonl", [record]))
    assert inst.original_lines == NUMBERS and inst.omitted_indices == (1, 6)
    assert inst.answer_lines == ["3070", "3035"] and inst.metadata["order"] == "descending"
    assert_oracle_solves([inst])


def upstream_pr_record(diff: str, delete: set[int]) -> dict:
    """A record the way upstream's process_github_prs.py builds one, for chosen deletions: it indexes
    str.splitlines() lines, never keeps a line that occurs twice, records deleted +/- lines only, and
    joins the kept lines without a final newline."""
    lines = diff.splitlines()
    kept, omitted_lines, omitted_index = [], [], []
    for i, line in enumerate(lines):
        if lines.count(line) > 1:
            continue
        if i in delete:
            if line.startswith(("+", "-")):
                omitted_lines.append(line)
                omitted_index.append(i)
            continue
        kept.append(line)
    return {"issue_id": 4711, "original_diff": diff, "modified_diff": "\n".join(kept), "omitted_lines": omitted_lines,
            "omitted_index": omitted_index, "deletion_metadata": {"deletion_mode": "context_allowed"},
            "repo": "octo/cache", "pr_number": 4711}


def test_pr_diff_as_upstreams_generator_writes_it(tmp_path):
    # Ends in a newline; "+" (an added blank line) occurs twice; line 5 is context deleted unrecorded.
    diff = "\n".join([*DIFF[:10], "+", "+", *DIFF[10:]]) + "\n"
    record = upstream_pr_record(diff, {5, 7, 15})
    assert record["omitted_index"] == [7, 15]
    (inst,) = read_upstream(write_records(tmp_path / "github_prs_default.jsonl", [record]))
    assert inst.id == "upstream-github_prs-4711"
    assert inst.answer_lines == ["+        if key not in self._store:", "+        self._hits = 0"]
    # The context line, both copies of "+", and the empty line after the final newline.
    assert inst.metadata["dropped_context_indices"] == [5, 10, 11, 17]
    assert inst.metadata["repo"] == "octo/cache" and inst.metadata["deletion_metadata"]["deletion_mode"]
    assert_oracle_solves([inst])


def test_pr_diff_with_crlf_lines_is_read_the_way_upstream_indexed_it(tmp_path):
    # A file with Windows line ends: upstream's str.splitlines() index differs from a split on "\n".
    diff = "\n".join(DIFF[:5]) + "\n" + "\r\n".join(DIFF[5:]) + "\r\n"
    record = upstream_pr_record(diff, {7, 13})
    (inst,) = read_upstream(write_records(tmp_path / "crlf.jsonl", [record]))
    assert inst.metadata["line_split"] == "splitlines"
    assert inst.original_lines == DIFF and inst.omitted_indices == (7, 13)
    assert_oracle_solves([inst])


def test_hub_rows_from_a_local_dataset():
    """The hub loader's conversion, fed a local `datasets.Dataset` in the hub's (generic) naming."""
    for domain in DOMAINS:
        omission, needle = hand_built(domain, "omission"), hand_built(domain, "needle")
        needle_row = {"id": 1, "original_context": needle.original_text, "modified_context": needle.modified_text,
                      "needles": needle.answer_lines, "metadata": {"omission_prob": 0.1}}
        # One table, so a row has None in the columns of the other kind of record.
        rows = datasets.Dataset.from_list([{**generic_row(omission, 0), "needles": None},
                                           {**needle_row, "omitted_context": None, "omitted_index": None}])
        back = instances_from_hf_rows(rows, domain)
        assert [b.id for b in back] == [f"upstream-{domain}-0", f"upstream-{domain}-1"]
        assert same_task(omission, back[0]) and same_task(needle, back[1])
        assert all(b.split == "test" for b in back)
        assert_oracle_solves(back)
    bad = datasets.Dataset.from_list([generic_row(hand_built("poetry", "omission"), k) for k in range(2)])
    bad = bad.map(lambda row, k: {"omitted_index": [3, 5] if k == 1 else row["omitted_index"]}, with_indices=True)
    with pytest.raises(DataError, match=r"harveyfin/AbsenceBench \(poetry\) row 1: omitted_context\[0\]"):
        instances_from_hf_rows(bad, "poetry")


# ---- records that do not check out --------------------------------------------------------------

def test_omitted_lines_disagreeing_with_indices_name_file_and_line(tmp_path):
    good = to_upstream_record(hand_built("github_prs", "omission"))
    bad = dict(good, omitted_lines=["+        self._hits = 0", "+        if key not in self._store:"])
    path = write_records(tmp_path / "prs.jsonl", [good, bad])
    message = "prs.jsonl:2: omitted_lines[0] is '+        self._hits = 0' but original line 7 is"
    with pytest.raises(DataError, match=re.escape(message)):
        read_upstream(path)


def test_malformed_line_names_its_number(tmp_path):
    good = to_upstream_record(hand_built("poetry", "omission"))
    path = tmp_path / "poems.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(dict(good, id=2)) + "\n" + '{"id": 3, "original_poem": \n')
    with pytest.raises(DataError, match=r"poems\.jsonl:3: malformed JSON"):
        read_upstream(path)
    path.write_text("")
    with pytest.raises(DataError, match=r"poems\.jsonl: no records"):
        read_upstream(path)


def test_unknown_domain_is_refused(tmp_path):
    path = write_upstream_one(tmp_path, hand_built("poetry", "omission"))
    record = json.loads(path.read_text(encoding="utf-8"))
    with pytest.raises(DataError, match=r"poetry_omission\.jsonl: unknown domain 'recipes'"):
        read_upstream(path, domain="recipes")
    with pytest.raises(DataError, match="unknown domain 'recipes'"):
        from_upstream_record(record, "recipes")
    with pytest.raises(DataError, match="unknown domain 'recipes'"):
        instances_from_hf_rows([record], "recipes")


def poem_record(**changes):
    return {**to_upstream_record(hand_built("poetry", "omission")), **changes}


PLACEHOLDER_POEM = "\n".join(PLACEHOLDER if i in (2, 5) else x for i, x in enumerate(POEM))


@pytest.mark.parametrize("record, message", [
    (poem_record(modified_poem="\n".join(POEM[:3] + POEM[4:5] + POEM[6:])),
     "original line 3 'and leaves a track like half a dream.' is not listed as omitted but is missing from the "
     "modified text (modified line 2 is 'a sparrow tests the frosted lawn')"),
    (poem_record(modified_poem="\n".join(POEM[:2] + POEM[3:])),
     "the modified text has 9 lines; the original's 10 minus the 2 omitted make 8"),
    (poem_record(modified_poem=PLACEHOLDER_POEM, omitted_line_indices=[2, 6]),
     "original line 5 'The milk van hums along the lane,' is not listed as omitted but is missing from the "
     "modified text (modified line 5 is '<missing line>')"),
    (poem_record(modified_poem=PLACEHOLDER_POEM, omitted_line_indices=[1, 2, 5]),
     "omitted line 1 has no marker '<missing line>' in the modified text (modified line 1 is 'the window"),
    (poem_record(omitted_line_indices=[2, 12]), "field 'omitted_line_indices' points outside the original's 10 lines"),
    (poem_record(omitted_line_indices=[5, 2]), "field 'omitted_line_indices' must be strictly increasing"),
    (poem_record(modified_poem=PLACEHOLDER_POEM.replace(POEM[4], PLACEHOLDER), omitted_line_indices=[2, 4, 5]),
     "omitted line 4 '' is blank or repeats an earlier omitted line"),
    ({**to_upstream_record(hand_built("numerical", "omission")), "omitted_mask": [True] * 11},
     "a numerical record (field original_sequence) where poetry was expected"),
    ({"id": 9, "poem": "a\nb"}, "expected exactly one of the upstream AbsenceBench fields original_poem"),
])
def test_records_that_do_not_check_out_name_file_and_line(tmp_path, record, message):
    path = write_records(tmp_path / "bad.jsonl", [poem_record(), record])
    with pytest.raises(DataError, match=re.escape(f"bad.jsonl:2: {message}")):
        read_upstream(path)


@pytest.mark.parametrize("domain, change, message", [
    ("numerical", {"omitted_mask": [True] * 11}, "omitted_mask has 11 entries for 12 original elements"),
    ("github_prs", {"omitted_lines": ["+        if key not in self._store:"], "omitted_index": [7]},
     "original line 13 '+        self._hits = 0' is not listed as omitted but is missing"),
    ("github_prs", {"modified_diff": "\n".join(DIFF[:12] + DIFF[13:]), "omitted_lines": [], "omitted_index": []},
     "original line 12 '+        self._store[key] = value' is not listed as omitted but is missing"),
])
def test_other_domains_records_that_do_not_check_out(tmp_path, domain, change, message):
    record = {**to_upstream_record(hand_built(domain, "omission")), **change}
    with pytest.raises(DataError, match=re.escape(f"one.jsonl:1: {message}")):
        read_upstream(write_records(tmp_path / "one.jsonl", [record]))


def test_needle_records_that_do_not_check_out(tmp_path):
    record = to_upstream_record(hand_built("poetry", "needle"))
    swapped = dict(record, needles=list(reversed(record["needles"])))
    with pytest.raises(DataError, match=re.escape("needles.jsonl:1: modified line 3 'Hermione Granger is a "
                                                  "character in the novels' is neither the next original line")):
        read_upstream(write_records(tmp_path / "needles.jsonl", [swapped]))
    with pytest.raises(DataError, match="a needle record needs a 'needles' field"):
        from_upstream_record({k: v for k, v in record.items() if k != "needles"}, "poetry", "needle")


def test_writing_refuses_mixed_domains_and_nothing(tmp_path):
    path = tmp_path / "mixed.jsonl"
    with pytest.raises(DataError, match="instances of 2 domains"):
        write_upstream(path, [hand_built("poetry", "omission"), hand_built("numerical", "omission")])
    with pytest.raises(DataError, match="no instances to write"):
        write_upstream(path, [])
    assert not path.exists()


@pytest.mark.parametrize("kept_copy", ["+        self._hits = 0", "+        self._hits = 0   "],
                         ids=["same text", "same text after normalisation"])
def test_a_gold_line_with_a_kept_copy_round_trips_and_the_oracle_scores_one(tmp_path, kept_copy):
    """Upstream files ask about changed lines whose text occurs again in the diff (one copy deleted and
    listed, the other kept); the oracle used to skip them (0.988 on such a file, exit 2)."""
    diff = [*DIFF, "@@ -30,2 +33,3 @@ class Cache:", "     def reset(self):", kept_copy]
    record = {"issue_id": 9, "original_diff": "\n".join(diff),
              "modified_diff": "\n".join(x for i, x in enumerate(diff) if i != 13),
              "omitted_lines": [diff[13]], "omitted_index": [13], "repo": "octo/cache"}
    path = write_records(tmp_path / "github_prs_upstream.jsonl", [record])
    (inst,) = read_upstream(path)
    assert inst.answer_lines == ["+        self._hits = 0"] and "dropped_context_indices" not in inst.metadata
    assert_oracle_solves([inst])
    again = tmp_path / "written.jsonl"
    write_upstream(again, [inst])
    (back,) = read_upstream(again)
    assert same_task(inst, back)
    write_upstream(tmp_path / "written_again.jsonl", [back])
    assert (tmp_path / "written_again.jsonl").read_bytes() == again.read_bytes()
    proc = subprocess.run(["absence-bench", "oracle", "--data", str(again)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["github_prs/omission"]["f1"] == 1.0
