"""User preferences as discrete tokens (DPPMG): interaction graph, modal-specific GNN, BPR training,
residual quantization, and the nightly stage that ties them together.

Only the stage is exported here; torch loads when it runs, not when this package is imported.
"""

from pmg_tasks.preferences.stage import update_preference_tokens

__all__ = ["update_preference_tokens"]
