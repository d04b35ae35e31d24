"""Evaluation: metrics, generation loops and runners."""
