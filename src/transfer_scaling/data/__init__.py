"""Data: corpora pinned by version and hash, cleaned and split into documents, the tokenizer, and the D_F and D
subsets drawn from the target. Runs without torch.
"""
