"""Test-size models: every role loads back through its library's own from_pretrained and does its job."""

from __future__ import annotations

from pathlib import Path

import pytest

from pmg_tasks.models import build_test_size_models, model_version
from pmg_tasks.models.test_size import build_clip, clip_tokenizer, learn_bpe_merges
from pmg_tasks.settings import ModelPaths

ROLES = ("diffusion", "clip", "llm")


def test_diffusion_pipeline_loads_and_draws_the_requested_size(test_size_models: ModelPaths):
    import torch
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(test_size_models.diffusion)
    pipeline.set_progress_bar_config(disable=True)
    assert pipeline.safety_checker is None
    for size in (64, 32):
        images = pipeline(
            ["a red summer dress", "white sneakers"],
            num_inference_steps=2,
            height=size,
            width=size,
            generator=[torch.Generator().manual_seed(seed) for seed in (1, 2)],
        ).images
        assert [image.size for image in images] == [(size, size)] * 2


def test_clip_loads_with_its_processor(test_size_models: ModelPaths):
    import torch
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(test_size_models.clip)
    processor = CLIPProcessor.from_pretrained(test_size_models.clip)
    inputs = processor(
        text=["a red dress", "vintage leather bag"],
        images=[Image.new("RGB", (64, 48), "red")],
        padding=True,
        return_tensors="pt",
    )
    with torch.inference_mode():
        logits = model(**inputs).logits_per_image
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)
    assert logits.shape == (1, 2)
    assert torch.isfinite(logits).all()


def test_llm_generates_in_batches_padded_on_the_left(test_size_models: ModelPaths):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(test_size_models.llm)
    model = AutoModelForCausalLM.from_pretrained(test_size_models.llm)
    prompts = ["keywords:", "the user clicked red sneakers and a vintage leather bag. keywords:"]
    batch = tokenizer(prompts, padding=True, return_tensors="pt")
    assert tokenizer.padding_side == "left"
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1

    options = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False}
    with torch.inference_mode():
        batched = model.generate(**batch, **options)[:, batch["input_ids"].shape[1] :]
        alone = tokenizer(prompts[:1], return_tensors="pt")
        single = model.generate(**alone, **options)[:, alone["input_ids"].shape[1] :]
    assert batched.shape == (2, 4)
    # Left padding is what lets the short prompt continue exactly as it would on its own.
    assert torch.equal(batched[0], single[0])
    assert all(isinstance(text, str) for text in tokenizer.batch_decode(batched))


def test_build_is_deterministic(test_size_models: ModelPaths, tmp_path: Path):
    from safetensors.torch import load_file

    again = build_test_size_models(tmp_path / "again")
    for role in ROLES:
        first, second = Path(getattr(test_size_models, role)), Path(getattr(again, role))
        assert model_version(str(first)) == model_version(str(second))
        weight_files = sorted(p.relative_to(first) for p in first.rglob("*.safetensors"))
        assert weight_files == sorted(p.relative_to(second) for p in second.rglob("*.safetensors"))
        assert weight_files
        for relative in weight_files:
            tensors, tensors_again = load_file(first / relative), load_file(second / relative)
            assert tensors.keys() == tensors_again.keys()
            assert all((tensors[name] == tensors_again[name]).all() for name in tensors)


def test_model_version_names_the_model_and_tells_weights_apart(test_size_models: ModelPaths, tmp_path: Path):
    version = model_version(test_size_models.clip)
    assert version.startswith("clip-") and len(version) == len("clip-") + 12
    reseeded = build_clip(tmp_path / "clip", seed=1)
    # Same configs, different random weights: the weight tail tells them apart.
    assert model_version(str(reseeded)) != version
    assert len({model_version(getattr(test_size_models, role)) for role in ROLES}) == 3


def test_model_version_of_a_name_without_files_is_stable():
    assert model_version("org/some-model") == model_version("org/some-model")
    assert model_version("org/some-model").startswith("some-model-")


def test_clip_tokenizer_keeps_corpus_words_whole():
    tokenizer = clip_tokenizer()
    tokens = tokenizer.tokenize("A photo of a red summer dress")
    assert tokens == ["a</w>", "photo</w>", "of</w>", "a</w>", "red</w>", "summer</w>", "dress</w>"]
    assert tokenizer.model_max_length == 77


def test_learned_merges_break_ties_alphabetically():
    words = [("a", "b"), ("c", "d"), ("a", "b", "c", "d")]
    assert learn_bpe_merges(words) == [("a", "b"), ("c", "d"), ("ab", "cd")]
    assert learn_bpe_merges(words, min_count=3) == []


@pytest.mark.parametrize("role", ROLES)
def test_every_role_is_written_with_safetensors(test_size_models: ModelPaths, role: str):
    directory = Path(getattr(test_size_models, role))
    assert list(directory.rglob("*.safetensors"))
    assert not list(directory.rglob("*.bin"))
