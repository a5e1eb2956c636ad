"""The study: the only place that runs the other stages (data, trainers, lm-eval, leaderboard) — `python -m
study.experiment` (zero-shot vs SFT vs contrastive arms at equal compute or time, on the test suite and held-out
files), `python -m study.sweep` (trainer settings chosen on the validation split) and `python -m study.curve`
(F1 against training instances); `study.plan` holds what a study runs. It may import every package; nothing
imports it."""
