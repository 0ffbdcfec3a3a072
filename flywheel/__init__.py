"""Flywheel's shared pieces: the trace record, the tiny test model, the mlx_lm.server manager."""
