"""Staged training: data, stages, the training run, checkpoints and the merge."""
