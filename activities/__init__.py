"""Temporal activities: all the workflows' I/O, each safe to retry."""
