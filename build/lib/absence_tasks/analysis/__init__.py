"""Analyses of trained models beyond their scores.

* `absence_tasks.analysis.attention` – do the answer-side positions attend to where something is
  missing? (`python -m absence_tasks.analysis.attention --help`)
"""
