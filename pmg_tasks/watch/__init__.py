"""Watching a night nobody watches: alerts and deadlines, the run's settings, stage metrics (docs/operations.md)."""
