"""Evaluation: statistics, reward-model evaluation, plots (and, later, win rates and reports)."""
