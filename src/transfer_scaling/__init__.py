"""transfer-scaling: measure how much data pretraining is worth (Hernandez et al. 2021).

Modules, one per concern: ``config`` (validation), ``corpora`` and ``tokenizer`` (data),
``model``, ``training``, ``evaluation``, ``fitting``, ``jointlaw``, ``plots``, ``io`` (atomic files).
Fitting and plotting never import torch or deepspeed, so a fit of a runs table is fast.
"""

__version__ = "0.3.0"
