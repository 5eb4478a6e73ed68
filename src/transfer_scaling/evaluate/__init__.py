"""Per-run evaluation: the test loss of a run's best weights on the target's held-out split (per token and per
character) and the downstream line-completion scores of the pretraining-data axis.
"""
