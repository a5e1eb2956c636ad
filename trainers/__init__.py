"""Trainers for Reverse Needle: the SFT baseline (`python -m trainers.sft`) and the contrastive "attend to
absence" method (`python -m trainers.contrastive`), both TRL SFTTrainers, and reinforcement from the task's own
F1 (`python -m trainers.rl`, TRL's GRPOTrainer); all of them count their tokens and FLOPs. The pure loss
functions and token-alignment helpers live in `trainers.losses`, the RL reward and advantages in
`trainers.rewards`, the training data in `trainers.data`, the command-line configuration in `trainers.config`."""
