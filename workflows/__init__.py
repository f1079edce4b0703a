"""Temporal workflow definitions: deterministic, no I/O; they act through activities."""
