"""The study: the only place that runs the other stages (data, trainers, lm-eval, leaderboard) — `python -m
study.experiment` (zero-shot vs SFT vs contrastive at equal compute) and `python -m study.curve` (F1 against
training instances). It may import every package; nothing imports it."""
