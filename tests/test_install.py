"""A plain, non-editable install carries everything the commands need: the wheel holds the tasks, the
prompts, the embedded PR records with their licences, the leaderboard schema and page templates (and no results), and
the installed commands work from a directory that is not the checkout."""

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy: setuptools writes build/ and *.egg-info into the tree it builds.
    source = tmp_path_factory.mktemp("source") / "reverse-needle"
    top_level_only = {".git", "build", "runs", "checkpoints", "data", "results", "outputs"}

    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n.endswith(".egg-info") or n == "__pycache__"}
        return skipped | (top_level_only & set(names) if Path(folder) == ROOT else set())

    shutil.copytree(ROOT, source, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, capture_output=True, timeout=600)
    (path,) = out.glob("reverse_needle-*.whl")
    return path


def test_the_wheel_holds_the_package_data_and_no_results(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("task_configs/_absence_default.yaml", "task_configs/_absence_pass_at_k.yaml",
                 "task_configs/absencebench.yaml", "task_configs/utils.py",
                 "absence_tasks/prompts/_base.jinja", "absence_tasks/sources/data/prs/NOTICE",
                 "absence_tasks/sources/data/prs/trl.jsonl.gz", "absence_tasks/sources/data/prs/licenses/spf13__cobra.txt",
                 "leaderboard/schema.json", "leaderboard/templates/page.html.jinja",
                 "leaderboard/templates/leaderboard.md.jinja"):
        assert name in names, name
    assert sum(n.startswith("task_configs/absence") and n.endswith(".yaml") for n in names) == 16
    assert sum(n.endswith(".jsonl.gz") for n in names) == 5
    assert not [n for n in names if n.startswith("results/") or "/results/" in n]
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[lm_eval.tasks]\nabsencebench = task_configs" in text


def test_installed_commands_work_from_another_directory(wheel, tmp_path):
    # The venv sees this interpreter's packages (torch, lm-eval, ...) but gets its own copy of ours, which
    # comes first on its path, so what runs below is the wheel, not the checkout.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python, bin_dir = env_dir / "bin" / "python", env_dir / "bin"
    # --ignore-installed: the venv also sees this interpreter's (editable) reverse-needle of the same version.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--ignore-installed", str(wheel)], check=True, capture_output=True, timeout=600)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(REVERSE_NEEDLE_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    def run(*cmd):
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    site = run(str(python), "-c", "import absence_tasks, task_configs, leaderboard, trainers, analysis.attention.cli, analysis.probe.cli; "
                                  "print(absence_tasks.__file__, task_configs.__file__)").split()
    assert all(Path(p).is_relative_to(env_dir) for p in site), site
    task_dir = Path(run(str(bin_dir / "absence-bench"), "task-path").strip())
    assert task_dir.is_relative_to(env_dir) and (task_dir / "absence_poetry.yaml").is_file()
    run(str(bin_dir / "absence-bench"), "generate", "--domain", "github_prs", "--n", "3", "--out", "prs.jsonl")
    assert all(json.loads(line)["metadata"]["license"] for line in (work / "prs.jsonl").read_text().splitlines())
    run(str(bin_dir / "absence-lm-eval"), "--tasks", "absence_poetry", "--model", "absence-oracle",
        "--metadata", json.dumps({"n": 3}), "--output_path", "out")
    (results,) = (work / "out").rglob("results_*.json")
    assert json.loads(results.read_text())["results"]["absence_poetry"]["f1,none"] == 1.0
    assert "publish" in run(str(python), "-m", "leaderboard", "--help")
    assert "--compute_budget_flops" in run(str(python), "-m", "trainers.sft", "--help")
