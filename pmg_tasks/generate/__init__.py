"""The generate + score stage: draw candidates with the diffusion pipeline, score them with CLIP, keep the best."""

from pmg_tasks.generate.shard import generate_shard

__all__ = ["generate_shard"]
