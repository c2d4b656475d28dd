"""Evaluation: win-rate metrics, proving-ground accuracy, run reports."""
