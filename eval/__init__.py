"""Evaluation: metrics of rollouts against ground truth and of videos alone (drift, VDE)."""
