"""Reporting: the figures, the answer page that opens the report, and the advice for a user's own N and D_F, all
read from the fit's files. No torch.
"""
