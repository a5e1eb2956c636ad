"""Exact line scoring: parsing, tp/fp/fn, aggregates, and where it departs from upstream's substring test."""

import itertools

import pytest

from absence_tasks.schema import Instance
from absence_tasks.scoring import (micro_f1, mean_f1, normalize_line, oracle_answer, parse_response, pass_at_k,
                                   pass_at_ks, score_lines, score_response, summarize, upstream_substring_score)


def poem(lines, omitted, variant="omission"):
    modified = [x for i, x in enumerate(lines) if i not in omitted]
    return Instance("p", "poetry", variant, "test", lines, modified, omitted)


def diff(lines, omitted):
    modified = [x for i, x in enumerate(lines) if i not in omitted]
    return Instance("d", "github_prs", "omission", "test", lines, modified, omitted)


NIGHT = poem(["The night is long", "Long", "and the night is long and cold", "the stars are out"], [2])
CODE = diff([
    "diff --git a/m.py b/m.py",
    "--- a/m.py",
    "+++ b/m.py",
    "@@ -1,3 +1,3 @@",
    " x = 1",
    "-    return self.value",
    "+max_x = 10",
    " y = 2",
], [6])
SEQ = Instance("n", "numerical", "omission", "test", ["1", "2", "12", "21"], ["1", "2", "21"], [2])
# A gold line whose text occurs twice in the diff: one copy deleted (line 5, the question), one kept (line 8).
TWICE = diff([
    "diff --git a/m.py b/m.py",
    "--- a/m.py",
    "+++ b/m.py",
    "@@ -1,6 +1,6 @@",
    " def f():",
    "+    pass",
    " def g():",
    "-    return 1",
    "+    pass",
], [5])


def test_normalize_line_folds_whitespace_keeps_case():
    assert normalize_line("  a \t b  ") == "a b"
    assert normalize_line("Foo") != normalize_line("foo")


@pytest.mark.parametrize("response, expected", [
    ("- and the night is long and cold", ["and the night is long and cold"]),
    ("1. and the night is long and cold", ["and the night is long and cold"]),
    ("2) \"and the night is long and cold\"", ["and the night is long and cold"]),
    ("Line 3: and the night is long and cold", ["and the night is long and cold"]),
    ("```\nand the night is long and cold\n```", ["and the night is long and cold"]),
    ("<think>Long? the stars are out?</think>\nand the night is long and cold", ["and the night is long and cold"]),
    ("* “and the night is long and cold”,", ["and the night is long and cold"]),
    ("Here are the missing lines:\n\nand the night is long and cold",
     ["Here are the missing lines:", "and the night is long and cold"]),
])
def test_parse_strips_decoration(response, expected):
    assert parse_response(response, NIGHT.original_lines) == expected


def test_parse_keeps_a_diff_lines_own_sign():
    # The raw line is a document line, so its leading "-"/"+" is not taken for a bullet.
    assert parse_response("-    return self.value", CODE.original_lines) == ["- return self.value"]
    assert parse_response("+max_x = 10", CODE.original_lines) == ["+max_x = 10"]
    # ... but a bullet in front of a diff line goes.
    assert parse_response("- +max_x = 10", CODE.original_lines) == ["+max_x = 10"]


def test_parse_splits_comma_lists_only_when_every_piece_is_a_line():
    assert parse_response("12, 21", SEQ.original_lines) == ["12", "21"]
    assert parse_response("12, 99", SEQ.original_lines) == ["12, 99"]


def test_perfect_empty_and_wrong_answers():
    assert score_response(NIGHT, "and the night is long and cold").f1 == 1.0
    empty = score_response(NIGHT, "")
    assert (empty.tp, empty.fp, empty.fn, empty.f1) == (0, 0, 1, 0.0)
    wrong = score_response(NIGHT, "the stars are out")
    assert (wrong.tp, wrong.fp, wrong.fn, wrong.f1) == (0, 1, 1, 0.0)
    assert wrong.false_positive_lines == ["the stars are out"]


def test_repeated_lines_count_once():
    s = score_response(NIGHT, "and the night is long and cold\nand the night is long and cold")
    assert (s.tp, s.fp, s.fn, s.f1) == (1, 0, 0, 1.0)
    looping = score_response(NIGHT, "\n".join(["the stars are out"] * 50 + ["and the night is long and cold"]))
    assert (looping.tp, looping.fp, looping.fn) == (1, 1, 0)


def test_chatter_is_unmatched_not_false_positive():
    s = score_response(NIGHT, "Sure! The missing line is:\nand the night is long and cold")
    assert (s.tp, s.fp, s.fn) == (1, 0, 0)
    assert s.unmatched_lines == ["Sure! The missing line is:"]


def test_nothing_omitted_keeps_upstreams_rule():
    lines = ["a", "b", "c", "d"]
    # Our schema never generates such an instance; upstream files can hold one: score lines directly.
    assert score_lines(["b"], [], lines, len(lines)).f1 == pytest.approx(1 - 1 / 4)
    assert score_lines([], [], lines, len(lines)).f1 == 1.0


def test_aggregates_mean_vs_micro():
    a = score_lines(["x"], ["x"], ["x", "y"], 2)           # f1 1
    b = score_lines(["y"], ["x", "z"], ["x", "y", "z"], 3)  # tp0 fp1 fn2 -> f1 0
    assert mean_f1([a, b]) == 0.5
    assert micro_f1([a, b]) == pytest.approx(2 * 1 / (2 * 1 + 1 + 2))
    summary = summarize([a, b])
    assert summary["n"] == 2 and summary["f1"] == 0.5 and summary["precision"] == 0.5


# Every case in this table scores differently under upstream's rule (a document line counts as listed
# when its stripped, lower-cased text occurs anywhere in the lower-cased response) and ours.
DISAGREEMENTS = [
    ("a short line is a substring of the answer", NIGHT, "and the night is long and cold", 1.0, 0.5,
     "'Long' and 'The night is long' occur inside the one line listed; the model did not list them"),
    ("a context line is a substring of the changed line", CODE, "+max_x = 10", 1.0, 2 / 3,
     "the context line ' x = 1' was not listed; its stripped text just occurs inside 'max_x = 10'"),
    ("a number is a substring of another", poem(["1", "2", "12", "21"], [2]), "12", 1.0, 0.5,
     "'1' and '2' are digits of 12, not answers (upstream's poetry/PR rule applied to numbers)"),
    ("line plus commentary", NIGHT, "and the night is long and cold (I think this was line 3)", 0.0, 0.5,
     "the listed line is not the document's line; under the substring rule any text containing it scores"),
    ("re-cased code line", CODE, "+MAX_X = 10", 0.0, 2 / 3,
     "in a diff case is code: MAX_X is another name than max_x (and ' x = 1' still leaks a false positive)"),
    ("a gold line with a kept copy", TWICE, "+    pass", 1.0, 2 / 3,
     "the text the model was asked for is the text it listed; the kept copy is the same text, not a second "
     "(false) answer, which the substring rule makes it"),
    ("the whole modified copy pasted in one line", NIGHT,
     "The night is long Long and the night is long and cold the stars are out", 0.0, 0.4,
     "pasting everything on one line lists nothing; upstream credits the gold line and every other line"),
]


@pytest.mark.parametrize("name, inst, response, ours, theirs, why", DISAGREEMENTS, ids=[d[0] for d in DISAGREEMENTS])
def test_where_exact_matching_departs_from_upstream(name, inst, response, ours, theirs, why):
    assert score_response(inst, response).f1 == pytest.approx(ours)
    assert upstream_substring_score(inst, response)["f1"] == pytest.approx(theirs)
    assert ours != pytest.approx(theirs)


def test_oracle_solves_omission_placeholder_needle():
    lines = ["a", "b", "c", "d", "e"]
    assert score_response(NIGHT, oracle_answer(NIGHT)).f1 == 1.0
    ph = Instance("x", "poetry", "placeholder", "test", lines, ["a", "<missing line>", "c", "<missing line>", "e"], [1, 3])
    assert oracle_answer(ph) == "b\nd"
    nd = Instance("y", "poetry", "needle", "test", lines, ["a", "z", "b", "c", "d", "e", "w"], (), [1, 6])
    assert oracle_answer(nd) == "z\nw"
    assert score_response(nd, oracle_answer(nd)).f1 == 1.0


def test_oracle_reports_only_changed_lines_of_a_diff():
    # Upstream's context-deletion mode: a dropped context line is not part of the answer.
    modified = [x for i, x in enumerate(CODE.original_lines) if i not in (4, 6)]
    inst = Instance("c", "github_prs", "omission", "test", CODE.original_lines, modified, [6],
                    metadata={"dropped_context_indices": [4]})
    assert oracle_answer(inst) == "+max_x = 10"
    assert score_response(inst, oracle_answer(inst)).f1 == 1.0


def test_oracle_answers_a_gold_line_that_has_a_kept_copy():
    # Under the old oracle (lines occurring twice are never answers) this instance scored 0.
    assert oracle_answer(TWICE) == "+    pass"
    assert score_response(TWICE, oracle_answer(TWICE)).f1 == 1.0
    # Upstream's generator deletes every copy of a repeated line unasked: no copy left, no answer.
    both_gone = Instance("b", "github_prs", "omission", "test", TWICE.original_lines,
                         [x for i, x in enumerate(TWICE.original_lines) if i not in (5, 7, 8)], [7],
                         metadata={"dropped_context_indices": [5, 8]})
    assert oracle_answer(both_gone) == "-    return 1"


def test_pass_at_k_is_the_chance_that_k_of_the_n_samples_hold_a_pass():
    for n in range(1, 7):
        for c in range(n + 1):
            outcomes = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(outcomes, k))
                assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))
    assert pass_at_k(8, 1, 1) == pytest.approx(1 / 8) and pass_at_k(8, 1, 8) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)
    # From the F1s of one instance's samples: a pass is an F1 at or above the threshold; k only up to n.
    assert pass_at_ks([1.0, 0.5, 0.0, 0.0], threshold=1.0) == {1: 0.25, 4: 1.0}
    assert pass_at_ks([0.5] * 8, threshold=0.5)[1] == 1.0 and pass_at_ks([0.4] * 8, threshold=0.5)[8] == 0.0
