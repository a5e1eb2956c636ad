"""The AbsenceBench paper's reported F1 scores, as leaderboard rows of method `reported`.

They were scored on the paper's own data (about 5K-token contexts), not on any suite of ours, and carry no
confidence intervals or per-instance scores: renderers keep them in a table of their own and nothing may
compare them with a measured row.
"""

from __future__ import annotations

from typing import Any

from leaderboard.schema import OMISSION_TASKS

CITATION = ("Fu et al., 2025. AbsenceBench: Language Models Can't Tell What's Missing. arXiv:2506.11440, "
            "main results table (F1 %; * = reasoning mode)")
PAPER_DATE = "2025-06"
PAPER_SUITE = {"id": "absencebench-paper", "sha256": None,
               "description": "AbsenceBench paper data (~5K-token contexts)"}
# The paper's column names for our tasks (its "Sequences" are our numerical sequences).
PAPER_COLUMNS = {"absence_poetry": "Poetry", "absence_numerical": "Sequences", "absence_github_prs": "GitHub PRs"}

# (model, reasoning mode, Poetry, Sequences, GitHub PRs, Average), F1 in percent as printed in the paper.
PAPER_F1_PERCENT = (
    ("Gemini-2.5-flash", True, 87.3, 95.4, 30.9, 71.2),
    ("Claude-3.7-Sonnet", True, 72.7, 96.0, 40.0, 69.6),
    ("Claude-3.7-Sonnet", False, 73.5, 91.4, 35.7, 66.9),
    ("Gemini-2.5-flash", False, 79.3, 85.2, 26.2, 63.6),
    ("o3-mini", True, 65.0, 78.1, 38.9, 60.7),
    ("GPT-4.1", False, 54.3, 57.5, 36.2, 49.3),
    ("DeepSeek-R1", True, 38.7, 29.5, 23.1, 30.4),
    ("Qwen3-235B", True, 26.1, 18.5, 24.6, 23.1),
    ("Mixtral-8x7B-Instruct", False, 4.9, 21.9, 17.3, 14.7),
)


def _point(percent: float) -> dict[str, Any]:
    # round(): 87.3 / 100 is 0.8729999999999999 in binary; store the fraction the paper printed.
    return {"value": round(percent / 100, 6), "ci_low": None, "ci_high": None}


def reported_rows() -> list[dict[str, Any]]:
    """One leaderboard row per model of the paper's table; the paper's own Average, not recomputed."""
    rows = []
    for model, reasoning, poetry, sequences, prs, average in PAPER_F1_PERCENT:
        f1 = {"absence_poetry": poetry, "absence_numerical": sequences, "absence_github_prs": prs}
        rows.append({
            "model": f"{model}*" if reasoning else model,
            "checkpoint_sha256": None,
            "method": "reported",
            "training": None,
            "tasks": {task: {"f1": _point(f1[task]), "precision": None, "recall": None, "n_instances": None}
                      for task in OMISSION_TASKS},
            "average": _point(average),
            "suite": dict(PAPER_SUITE),
            "backend": None,
            "lm_eval_version": None,
            "date": PAPER_DATE,
            "source": CITATION,
            "notes": ["reasoning mode (the paper's *)"] if reasoning else [],
        })
    return rows
