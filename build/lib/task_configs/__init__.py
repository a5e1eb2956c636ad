"""The AbsenceBench task folder for lm-eval (`--include_path`): YAMLs that `include` a shared base, and a
`utils.py` whose hooks live in `absence_tasks.lm_eval_tasks`. A package only so that it installs with
Reverse Needle; lm-eval reads the folder, not this module (`absence-bench task-path` prints it)."""
