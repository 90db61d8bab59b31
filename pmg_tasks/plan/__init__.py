"""Stage 6, plan: campaigns x audiences x target items -> shared generation requests in shards."""

from pmg_tasks.plan.stage import plan_generation

__all__ = ["plan_generation"]
