"""Hooks for the AbsenceBench task YAMLs. lm-eval imports this file by path; all logic lives in the
`absence_tasks` package (absence_tasks/lm_eval_tasks.py) so it is tested and importable."""

from absence_tasks.lm_eval_tasks import (AbsenceTask, dataset_loader, doc_to_target, doc_to_text,
                                         micro_f1_aggregation, process_results,
                                         process_results_pass_at_k)

numerical_omission = dataset_loader("numerical", "omission")
numerical_placeholder = dataset_loader("numerical", "placeholder")
numerical_needle = dataset_loader("numerical", "needle")
poetry_omission = dataset_loader("poetry", "omission")
poetry_placeholder = dataset_loader("poetry", "placeholder")
poetry_needle = dataset_loader("poetry", "needle")
github_prs_omission = dataset_loader("github_prs", "omission")
github_prs_placeholder = dataset_loader("github_prs", "placeholder")
github_prs_needle = dataset_loader("github_prs", "needle")

__all__ = ["AbsenceTask", "doc_to_text", "doc_to_target", "process_results", "process_results_pass_at_k",
           "micro_f1_aggregation",
           "numerical_omission", "numerical_placeholder", "numerical_needle",
           "poetry_omission", "poetry_placeholder", "poetry_needle",
           "github_prs_omission", "github_prs_placeholder", "github_prs_needle"]
