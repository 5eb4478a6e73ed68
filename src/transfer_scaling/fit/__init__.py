"""Fitting: the scratch curves and D_E, the law for transfer D_T = k D_F^alpha N^beta and its bootstrap, the derived
quantities, the joint laws over N and D, and the laws over D_p. numpy, scipy and pandas only: a runs table from
anywhere fits in seconds, without torch.
"""
