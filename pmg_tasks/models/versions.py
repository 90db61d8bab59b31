"""Model versions: short, stable names for what a model directory holds.

A version goes into every creative id, so a rerun with the same models writes the same names and a new model
writes new ones. Hashing whole weight files would cost minutes for real checkpoints; configs, tokenizer files
and a small tail of each weight file are enough to tell models apart.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

# Configs, model indexes, tokenizer vocabularies and merges, sentencepiece models: hashed whole.
CONFIG_SUFFIXES = frozenset({".json", ".txt", ".model"})
# Weights: hashed by size and last bytes, which hold tensor data (the head is a header of shapes).
WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".pth", ".ckpt"})
WEIGHT_TAIL_BYTES = 64 * 1024


def model_version(path: str) -> str:
    """`<basename>-<12 hex>` for the model at `path`; the same files always give the same version.

    For a local directory the hash covers every config and index file (by relative path and content) and each
    weight file's size and last 64 KiB, so two models with one config but different weights differ. Anything
    else (a hub id) is named by its own text.
    """
    directory = Path(path).expanduser()
    digest = hashlib.sha256()
    if directory.is_dir():
        for file in _model_files(directory):
            digest.update(file.relative_to(directory).as_posix().encode() + b"\0")
            digest.update(_fingerprint(file))
    else:
        digest.update(path.encode())
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", directory.name or path).strip("-") or "model"
    return f"{name}-{digest.hexdigest()[:12]}"


def _model_files(directory: Path) -> list[Path]:
    # Hidden folders (a hub download's .cache) hold timestamps, not the model.
    return sorted(
        file
        for file in directory.rglob("*")
        if file.is_file()
        and file.suffix in CONFIG_SUFFIXES | WEIGHT_SUFFIXES
        and not any(part.startswith(".") for part in file.relative_to(directory).parts)
    )


def _fingerprint(file: Path) -> bytes:
    if file.suffix in CONFIG_SUFFIXES:
        return hashlib.sha256(file.read_bytes()).digest()
    size = file.stat().st_size
    with open(file, "rb") as weights:
        weights.seek(max(0, size - WEIGHT_TAIL_BYTES))
        return hashlib.sha256(size.to_bytes(8, "big") + weights.read()).digest()
