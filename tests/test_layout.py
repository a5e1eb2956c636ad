"""The layout's rules, read from the source: imports run one way down the list of packages (each may
import only the ones above it), the leaderboard reads training records without the trainers, and no
module is over MAX_LINES lines but the few named below."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Top to bottom: the benchmark, its lm-eval task folder, training, the leaderboard, the analyses, and the
# study, the only place that may run every other stage (nothing imports it).
PACKAGES = ("absence_tasks", "task_configs", "trainers", "leaderboard", "analysis", "study")
# Above it in the list, yet not to be imported: the leaderboard reads a model's training record as
# plain JSON, so publishing a row needs neither torch nor TRL.
FORBIDDEN = {"leaderboard": {"trainers"}}
MAX_LINES = 500
LONGER_THAN_MAX = {
    # Reading and writing upstream AbsenceBench's three JSONL formats and its hub data, one converter per
    # domain and direction; 6 lines over, and it does one job.
    "absence_tasks/upstream.py",
}


def modules(root: Path = ROOT) -> list[Path]:
    return sorted(path for package in PACKAGES if (root / package).is_dir()
                  for path in (root / package).rglob("*.py"))


def imported_packages(path: Path) -> dict[str, int]:
    """Top-level package -> first line importing it, for every import in the module, also those inside
    functions (the lazy imports that keep torch off the start-up path count as much as the others)."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue  # a relative import stays inside its own package
        for name in names:
            found.setdefault(name.split(".")[0], node.lineno)
    return found


def import_violations(root: Path = ROOT) -> list[str]:
    violations = []
    for path in modules(root):
        where = path.relative_to(root).as_posix()
        package = where.split("/")[0]
        allowed = set(PACKAGES[:PACKAGES.index(package) + 1]) - FORBIDDEN.get(package, set())
        for imported, line in imported_packages(path).items():
            if imported in PACKAGES and imported not in allowed:
                violations.append(f"{where}:{line}: {package} imports {imported}")
    return violations


def test_imports_run_one_way():
    assert import_violations() == []


def test_the_check_sees_a_backward_import_inside_a_function(tmp_path):
    # What a violation looks like, so that the test above cannot pass by finding nothing.
    (tmp_path / "absence_tasks").mkdir()
    (tmp_path / "absence_tasks" / "generate.py").write_text("def f():\n    from leaderboard.stats import x\n")
    (tmp_path / "leaderboard").mkdir()
    (tmp_path / "leaderboard" / "publish.py").write_text("import trainers.sft\nimport absence_tasks.io\n")
    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "cli.py").write_text("import leaderboard.stats, trainers.data, study.plan\n")
    assert import_violations(tmp_path) == ["absence_tasks/generate.py:2: absence_tasks imports leaderboard",
                                           "analysis/cli.py:1: analysis imports study",
                                           "leaderboard/publish.py:1: leaderboard imports trainers"]


def test_no_module_is_longer_than_the_limit():
    lengths = {path.relative_to(ROOT).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
               for path in modules()}
    assert {where: n for where, n in lengths.items() if n > MAX_LINES and where not in LONGER_THAN_MAX} == {}
    # An allowed module that has come under the limit leaves the list.
    assert {where for where in LONGER_THAN_MAX if lengths.get(where, 0) <= MAX_LINES} == set()
