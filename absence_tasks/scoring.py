"""Scoring: parse a free-text response into lines, match them exactly against the document, F1.

Matching rule (documented in the README):
* A line is compared after `normalize_line`: Unicode NFC, surrounding white space stripped, every
  run of inner white space folded to one space. Case and punctuation are kept — this is an exact
  line match, not upstream's case-folded substring test (under which `}` or `1` in a response
  "matches" anywhere; see tests/test_scoring.py for the cases where the two disagree).
* Response lines are cleaned of list decoration (bullets, numbering, quotes, code fences), but a
  cleaning step is only taken when the raw line is not itself a line of the document — so a diff
  line's own leading `-` or `+` survives, while a bullet in front of a poem line goes.
* The answer is a set of lines: a repeated response line counts once. A response line that equals
  a gold line is a true positive; one that equals another document line is a false positive; one
  that matches nothing in the documents (chatter such as "Here are the missing lines:") is reported
  as `unmatched` and, like upstream, not counted.
* A gold line whose text also occurs elsewhere in the document (upstream's files have such lines: one
  copy deleted, one kept) is still a gold line: listing its text is a true positive, and the kept
  copy's identical text cannot also be a false positive. Upstream's substring rule counts it twice,
  once as found and once as a present line listed.
* Instances with nothing to find keep upstream's rule: score = 1 - fp / len(original_lines).
"""

from __future__ import annotations

import difflib
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any
from dataclasses import asdict, dataclass, field

from absence_tasks.schema import PLACEHOLDER, Instance

_WS = re.compile(r"\s+")
# Decorations a model puts in front of an answer line: bullets, "1." / "1)" / "(1)", "Line 3:".
_PREFIXES = (
    re.compile(r"^[-*•·+>]\s+"),
    re.compile(r"^\(?\d{1,4}[.):]\s+"),
    re.compile(r"^line\s+\d{1,5}\s*[:.)-]\s*", re.IGNORECASE),
)
_QUOTE_PAIRS = (('"', '"'), ("'", "'"), ("`", "`"), ("“", "”"), ("‘", "’"))
_FENCE = re.compile(r"^(```|~~~)")


def normalize_line(line: str) -> str:
    return _WS.sub(" ", unicodedata.normalize("NFC", line)).strip()


def _cleanings(line: str) -> list[str]:
    """Successively more cleaned forms of one response line, least cleaned first."""
    forms = [line]
    current = line
    changed = True
    while changed:
        changed = False
        for pattern in _PREFIXES:
            stripped = pattern.sub("", current, count=1)
            if stripped != current and stripped:
                current = stripped
                forms.append(current)
                changed = True
        for left, right in _QUOTE_PAIRS:
            if len(current) >= 2 and current.startswith(left) and current.endswith(right):
                current = current[len(left):-len(right)].strip()
                forms.append(current)
                changed = True
        if current.endswith(",") and len(current) > 1:
            current = current[:-1].rstrip()
            forms.append(current)
            changed = True
    return forms


def strip_reasoning(response: str) -> str:
    """Drop a reasoning model's thinking: everything up to the last `</think>`."""
    if "</think>" in response:
        response = response.rsplit("</think>", 1)[1]
    return response


def parse_response(response: str, known_lines: Iterable[str] = ()) -> list[str]:
    """Candidate answer lines (normalised) from a free-text response.

    `known_lines` are the document lines; a cleaning step is applied only while the line does not
    already equal one of them. A line that matches nothing whole but whose comma-separated pieces all
    do ("12, 15, 18") is split."""
    known = {normalize_line(x) for x in known_lines}
    out: list[str] = []
    for raw in strip_reasoning(response or "").splitlines():
        if _FENCE.match(raw.strip()):
            continue
        line = normalize_line(raw)
        if not line or line == normalize_line(PLACEHOLDER):
            continue
        forms = [normalize_line(f) for f in _cleanings(line)]
        match = next((f for f in forms if f in known), None)
        if match is not None:
            out.append(match)
            continue
        pieces = [normalize_line(p) for p in forms[-1].split(",")]
        if len(pieces) > 1 and all(p in known for p in pieces):
            out.extend(pieces)
            continue
        out.append(forms[-1])
    return out


@dataclass
class InstanceScore:
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    predicted_lines: list[str] = field(default_factory=list)
    matched_lines: list[str] = field(default_factory=list)
    false_positive_lines: list[str] = field(default_factory=list)
    missed_lines: list[str] = field(default_factory=list)
    unmatched_lines: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def score_lines(predicted: Sequence[str], gold: Sequence[str], document_lines: Iterable[str],
                original_length: int) -> InstanceScore:
    """Score already-parsed, normalised predicted lines against gold lines."""
    gold_left = Counter(normalize_line(g) for g in gold)
    document = {normalize_line(x) for x in document_lines}
    matched, false_pos, unmatched = [], [], []
    # The answer is a set of lines: saying a line twice neither earns nor costs more (a model stuck in
    # a loop gets one false positive per wrong line, not one per repetition).
    for line in dict.fromkeys(predicted):
        if gold_left[line] > 0:
            gold_left[line] -= 1
            matched.append(line)
        elif line in document:
            false_pos.append(line)
        else:
            unmatched.append(line)
    missed = [line for line, count in gold_left.items() for _ in range(count)]
    tp, fp, fn = len(matched), len(false_pos), len(missed)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = f1_from_counts(tp, fp, fn)
    if not gold:
        # Upstream's rule when nothing is missing: penalise each line wrongly reported.
        f1 = max(0.0, 1.0 - fp / max(original_length, 1))
        precision = recall = f1
    return InstanceScore(tp, fp, fn, precision, recall, f1, list(predicted), matched, false_pos, missed,
                         unmatched)


def score_response(instance: Instance, response: str) -> InstanceScore:
    document_lines = list(instance.original_lines) + list(instance.modified_lines)
    predicted = parse_response(response, document_lines)
    return score_lines(predicted, instance.answer_lines, document_lines, len(instance.original_lines))


def mean_f1(scores: Sequence[InstanceScore]) -> float:
    """Upstream's headline: the mean of per-instance F1."""
    return sum(s.f1 for s in scores) / len(scores) if scores else 0.0


def f1_from_counts(tp: int, fp: int, fn: int) -> float:
    """F1 = 2·tp / (2·tp + fp + fn); 0 when there is nothing to count. The one F1 formula of the project."""
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def micro_f1(counts: Iterable[Any]) -> float:
    """Corpus-level F1 from the summed tp/fp/fn of all instances (InstanceScores, or mappings with those keys,
    as lm-eval's per-instance results are)."""
    tp = fp = fn = 0
    for c in counts:
        get = c.get if isinstance(c, dict) else lambda key, c=c: getattr(c, key)
        tp, fp, fn = tp + get("tp"), fp + get("fp"), fn + get("fn")
    return f1_from_counts(tp, fp, fn)


def upstream_substring_score(instance: Instance, response: str) -> dict:
    """Upstream AbsenceBench's rule, kept for comparison only: a document line counts as listed when
    its stripped, lower-cased text occurs anywhere in the lower-cased response."""
    response_lc = strip_reasoning(response or "").lower()
    gold_idx = set(instance.omitted_indices)
    tp = fp = fn = 0
    if instance.variant == "needle":
        for line in instance.answer_lines:
            if line.strip().lower() in response_lc:
                tp += 1
            else:
                fn += 1
        for line in instance.original_lines:
            if line.strip() and line.strip().lower() in response_lc:
                fp += 1
    else:
        for i, line in enumerate(instance.original_lines):
            clean = line.strip().lower()
            if not clean:
                continue
            if clean in response_lc:
                tp, fp = (tp + 1, fp) if i in gold_idx else (tp, fp + 1)
            elif i in gold_idx:
                fn += 1
    f1 = f1_from_counts(tp, fp, fn)
    if not instance.answer_lines:
        f1 = 1 - fp / len(instance.original_lines)
    return {"tp": tp, "fp": fp, "fn": fn, "f1": f1}


# ---- oracle -----------------------------------------------------------------------------------

def _is_changed_diff_line(line: str) -> bool:
    return line.startswith(("+", "-")) and not line.startswith(("+++", "---"))


def oracle_answer(instance: Instance) -> str:
    """Solve an instance by reading both documents with difflib, as a perfect model would.

    Omission/placeholder: the original lines the modified document lacks. Needle: the modified lines
    the original lacks. For diffs only changed lines that occur once are the question's subject, so
    removed context lines (upstream's context-deletion mode) are not reported. The oracle never sees
    the indices."""
    if instance.variant == "needle":
        a, b = instance.original_lines, instance.modified_lines
    else:
        a = instance.original_lines
        b = [x for x in instance.modified_lines if x != PLACEHOLDER] if instance.variant == "placeholder" \
            else instance.modified_lines
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    found: list[str] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if instance.variant == "needle" and tag in ("insert", "replace"):
            found.extend(b[j1:j2])
        elif instance.variant != "needle" and tag in ("delete", "replace"):
            found.extend(a[i1:i2])
    if instance.domain == "github_prs":
        found = [x for x in found if _is_changed_diff_line(x)]
        if instance.variant == "needle":
            counts = Counter(normalize_line(x) for x in b)
            found = [x for x in found if counts[normalize_line(x)] == 1]
        else:
            # Upstream's PR generator deletes every line whose exact text occurs twice in the diff, all
            # copies and without asking about them: a gone line that had copies, none left, is no answer.
            # A gone line with a copy still present was asked about (see `score_lines`: its text answers).
            in_original, in_modified = Counter(a), Counter(b)
            found = [x for x in found if in_original[x] == 1 or in_modified[x] > 0]
    return "\n".join(dict.fromkeys(found))


def summarize(scores: Sequence[InstanceScore]) -> dict[str, float]:
    """The task-level metrics: means of per-instance values, plus corpus micro-F1."""
    n = len(scores)
    return {
        "n": n,
        "f1": mean_f1(scores),
        "precision": sum(s.precision for s in scores) / n if n else 0.0,
        "recall": sum(s.recall for s in scores) / n if n else 0.0,
        "micro_f1": micro_f1(scores),
    }


# ---- pass@k ------------------------------------------------------------------------------------------
# Chen et al. 2021 ("Evaluating Large Language Models Trained on Code"): with n samples of which c pass,
# 1 - C(n - c, k) / C(n, k) is the chance that k of the n, drawn without replacement, hold a pass — an
# unbiased estimate of the model's pass@k, defined for k <= n. A pass is an F1 at or above a threshold
# (1.0: exactly the missing lines).

PASS_AT_K = (1, 4, 8)
# A looser pass, F1 >= 0.5 (most missing lines named, few wrong ones): where a small model never answers
# exactly, pass@k at F1 1.0 is 0 everywhere and cannot say whether RL moved anything.
PASS50_F1 = 0.5


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimate from `n` samples of which `c` pass (1 <= k <= n)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_at_ks(f1s: Sequence[float], threshold: float = 1.0, ks: Sequence[int] = PASS_AT_K) -> dict[int, float]:
    """pass@k for each k up to the number of samples, from the F1s of one instance's sampled answers."""
    n, passed = len(f1s), sum(f1 >= threshold for f1 in f1s)
    return {k: pass_at_k(n, passed, k) for k in ks if k <= n}
