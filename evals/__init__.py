"""Evaluations of llmc checkpoints (HellaSwag: evals.hellaswag)."""
