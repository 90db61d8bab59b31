"""Preference tokens as words the diffusion text encoder knows (textual inversion): the training stage and
the token-embedding files that generation loads."""
