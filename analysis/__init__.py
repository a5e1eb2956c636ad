"""Analyses of what a model does with the omission tasks: where its answer-side attention goes
(`analysis.attention`) and whether a linear probe can read a gap from its attention while it reads
(`analysis.probe`). In the layout they sit below the leaderboard: they may import absence_tasks,
trainers.data and leaderboard.stats; nothing but study/ imports them."""
