"""Predictions against published measurements (the project's validation set, cases.yaml)."""
