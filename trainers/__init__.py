"""Trainers for Reverse Needle: SFT on omission tasks and contrastive training on original/edited
document pairs. The pure loss functions and token-alignment helpers live in :mod:`trainers.losses`."""
