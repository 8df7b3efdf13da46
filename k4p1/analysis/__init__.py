"""Analyses: parameter accounting (report.py) and the paper's section-4 folding (folding.py)."""
