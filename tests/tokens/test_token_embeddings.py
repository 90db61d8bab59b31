"""Preference tokens as learned rows of the text encoder: they reach it, they train alone, diffusers loads
them, and the stage versions them like the GNN's codebooks."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from pmg_tasks import layout
from pmg_tasks.generate.creatives import PersonalizedCreatives
from pmg_tasks.models.diffusion import apply_token_embeddings, load_diffusion_pipeline
from pmg_tasks.settings import Generation, ModelPaths, Settings
from pmg_tasks.store import open_store, read_json, write_table
from pmg_tasks.tokens.embeddings import (
    add_tokens,
    descriptor_vector,
    from_safetensors,
    rows,
    set_rows,
    to_safetensors,
    train_token_rows,
)
from pmg_tasks.tokens.stage import load_vectors, read_version, train_token_embeddings

DS, NEXT = "2026-11-20", "2026-11-21"
TOKEN, OTHER = "<pref_txt_0_3>", "<pref_img_0_1>"
GENERATION = Generation(image_size=32, batch_size=2, inference_steps=2, guidance_scale=5.0)


@pytest.fixture
def pipeline(test_size_models: ModelPaths):
    return load_diffusion_pipeline(Path(test_size_models.diffusion), "cpu", torch.float32)


def encoded(creatives: PersonalizedCreatives, prompt: str) -> torch.Tensor:
    positive, _ = creatives.encode_prompts([(prompt, "")])
    return positive[0]


def test_a_tokens_row_reaches_the_text_encoder(test_size_models):
    """Change a token's learned row and the encoder's output for a prompt with the token changes; a prompt
    without it does not."""
    dim = load_diffusion_pipeline(Path(test_size_models.diffusion), "cpu", torch.float32).text_encoder.config.hidden_size
    first, second = torch.zeros(dim), torch.full((dim,), 0.5)
    with_first = PersonalizedCreatives.from_models(test_size_models.diffusion, test_size_models.clip, GENERATION,
                                                   {TOKEN: first})  # fmt: skip
    with_second = PersonalizedCreatives.from_models(test_size_models.diffusion, test_size_models.clip, GENERATION,
                                                    {TOKEN: second})  # fmt: skip
    prompt = f"a red summer dress, in the taste of {TOKEN}"
    # The token is one word of the tokenizer, not a string of byte pieces.
    assert with_first.pipeline.tokenizer.tokenize(TOKEN) == [TOKEN]
    assert not torch.allclose(encoded(with_first, prompt), encoded(with_second, prompt))
    plain = "a red summer dress, studio lighting"
    assert torch.allclose(encoded(with_first, plain), encoded(with_second, plain))


def test_files_are_in_the_format_diffusers_loads_itself(pipeline, tmp_path):
    vector = torch.linspace(-1, 1, pipeline.text_encoder.config.hidden_size)
    path = tmp_path / "pref_txt_0_3.safetensors"
    path.write_bytes(to_safetensors(TOKEN, vector))
    pipeline.load_textual_inversion(str(path))
    row = pipeline.text_encoder.get_input_embeddings().weight[pipeline.tokenizer.convert_tokens_to_ids(TOKEN)]
    assert torch.equal(row, vector)
    assert from_safetensors(path.read_bytes())[0] == TOKEN
    with pytest.raises(ValueError, match="not a token-embedding file"):
        from_safetensors(b"garbage")


def test_training_moves_the_token_rows_and_nothing_else(pipeline):
    from PIL import Image

    token_ids = add_tokens(pipeline.tokenizer, pipeline.text_encoder, [TOKEN, OTHER])
    set_rows(pipeline.text_encoder, token_ids, {
        TOKEN: descriptor_vector(pipeline.tokenizer, pipeline.text_encoder, ["red", "summer", "dress"]),
        OTHER: descriptor_vector(pipeline.tokenizer, pipeline.text_encoder, []),
    })  # fmt: skip
    before = pipeline.text_encoder.get_input_embeddings().weight.detach().clone()
    unet_before = {k: v.clone() for k, v in pipeline.unet.state_dict().items()}
    images = {TOKEN: [Image.new("RGB", (40, 40), (200, 30, 30)), Image.new("RGB", (40, 40), (250, 120, 30))]}
    result = train_token_rows(
        pipeline, token_ids, images, steps_per_token=3, batch_size=2, learning_rate=0.05, resolution=32
    )
    after = pipeline.text_encoder.get_input_embeddings().weight.detach()
    assert result.steps == 2 and result.first_loss is not None
    assert not torch.equal(after[token_ids[TOKEN]], before[token_ids[TOKEN]])
    # OTHER has no image: it keeps its start. Every word of the base vocabulary is untouched, bit for bit.
    others = [i for i in range(after.shape[0]) if i != token_ids[TOKEN]]
    assert torch.equal(after[others], before[others])
    assert all(torch.equal(v, unet_before[k]) for k, v in pipeline.unet.state_dict().items())


def test_a_descriptor_row_is_the_mean_of_its_words(pipeline):
    token_ids = add_tokens(pipeline.tokenizer, pipeline.text_encoder, [TOKEN])
    words = ["red", "dress"]
    vector = descriptor_vector(pipeline.tokenizer, pipeline.text_encoder, words)
    pieces = pipeline.tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
    weight = pipeline.text_encoder.get_input_embeddings().weight
    assert torch.allclose(vector, weight[pieces].mean(dim=0))
    set_rows(pipeline.text_encoder, token_ids, {TOKEN: vector})
    assert torch.equal(rows(pipeline.text_encoder, token_ids)[TOKEN], vector)


# The stage, on a store laid out as the earlier stages leave it.


def stage_settings(home: Path, models: ModelPaths, **options) -> Settings:
    return Settings(home=home, models=models, generation=GENERATION,
                    token_embeddings={"steps_per_token": 2, "images_per_token": 2, "batch_size": 4, **options})


def write_run(settings: Settings, ds: str, with_images: bool = True) -> None:
    from pmg_tasks.demo.seed import item_picture

    store = open_store(settings)
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["A", "B", "C"],
                          "image_uri": [layout.item_image_key(i) if with_images else None for i in "abc"]})
    if with_images:
        for item, genre in zip("abc", ["Action", "Drama", "Sci-Fi"], strict=True):
            store.put_bytes(layout.item_image_key(item), item_picture(genre, {"style": "noir", "mood": "dark"}))
    events = pd.DataFrame({"user_id": ["u1", "u1", "u2", "u3"], "item_id": ["a", "b", "c", "c"],
                           "event_type": ["purchase", "view", "click", "view"]})
    tokens = pd.DataFrame({"user_id": ["u1", "u2", "u3"],
                           "tokens": [[TOKEN, OTHER], [TOKEN], ["<pref_txt_0_9>"]]})
    descriptors = pd.DataFrame({"token": [TOKEN, OTHER, "<pref_txt_0_9>"],
                                "top_keywords": [["red", "dress"], ["noir"], []],
                                "top_categories": [["Action"], ["Drama"], ["Sci-Fi"]]})
    for name, frame in (("items.parquet", items), ("events_valid.parquet", events),
                        ("preference_tokens.parquet", tokens), ("token_descriptors.parquet", descriptors)):
        write_table(store, layout.run_key(ds, name), frame)


def test_the_stage_writes_a_complete_version_and_a_rerun_trains_nothing(test_size_models, tmp_path):
    settings = stage_settings(tmp_path / "pmg", test_size_models)
    write_run(settings, DS)
    summary = train_token_embeddings(settings, DS)
    store = open_store(settings)
    index = read_version(store, DS)
    assert summary["trained_now"] and summary["tokens"] == 3 == summary["trained_tokens"]
    assert set(index["tokens"]) == {TOKEN, OTHER, "<pref_txt_0_9>"}
    assert index["tokens"][TOKEN]["images"] == 2 and index["tokens"]["<pref_txt_0_9>"]["images"] == 1
    assert store.get_bytes(layout.TOKEN_LATEST_KEY).decode() == DS
    assert set(load_vectors(store, DS)) == set(index["tokens"])
    files = {k: store.get_bytes(k) for k in store.list_keys(layout.token_model_prefix(DS))}

    again = train_token_embeddings(settings, DS)
    assert not again["trained_now"] and again["version_id"] == summary["version_id"]
    assert {k: store.get_bytes(k) for k in store.list_keys(layout.token_model_prefix(DS))} == files
    assert read_json(store, layout.run_key(DS, "stats/token_embeddings.json"))["version_id"] == summary["version_id"]


def test_without_images_tokens_keep_their_descriptor_rows_and_the_run_says_so(test_size_models, tmp_path, caplog):
    settings = stage_settings(tmp_path / "pmg", test_size_models)
    write_run(settings, DS, with_images=False)
    summary = train_token_embeddings(settings, DS)
    assert summary["trained_tokens"] == 0 and summary["descriptor_only_tokens"] == 3
    assert "keep their starting row" in caplog.text
    pipeline = load_diffusion_pipeline(Path(test_size_models.diffusion), "cpu", torch.float32)
    expected = descriptor_vector(pipeline.tokenizer, pipeline.text_encoder, ["red", "dress", "Action"])
    assert torch.allclose(load_vectors(open_store(settings), DS, [TOKEN])[TOKEN], expected)


def test_the_next_night_starts_from_last_nights_rows(test_size_models, tmp_path):
    settings = stage_settings(tmp_path / "pmg", test_size_models, steps_per_token=0)
    write_run(settings, DS, with_images=False)
    train_token_embeddings(settings, DS)
    store = open_store(settings)
    # Pretend last night's row of TOKEN was learned far from its descriptor.
    learned = torch.full_like(load_vectors(store, DS, [TOKEN])[TOKEN], 0.25)
    index = read_version(store, DS)
    store.put_bytes(index["tokens"][TOKEN]["file"], to_safetensors(TOKEN, learned))
    write_run(settings, NEXT, with_images=False)
    summary = train_token_embeddings(settings, NEXT)
    assert summary["warm_start_from"] == DS and summary["warm_started_tokens"] == 3
    assert torch.equal(load_vectors(store, NEXT, [TOKEN])[TOKEN], learned)
    assert store.get_bytes(layout.TOKEN_LATEST_KEY).decode() == NEXT


def test_a_damaged_file_names_itself_and_the_fix(test_size_models, tmp_path):
    settings = stage_settings(tmp_path / "pmg", test_size_models, steps_per_token=0)
    write_run(settings, DS, with_images=False)
    train_token_embeddings(settings, DS)
    store = open_store(settings)
    key = read_version(store, DS)["tokens"][TOKEN]["file"]
    store.put_bytes(key, b"\x00" * 10)
    with pytest.raises(ValueError, match=f"{key}.*rerun token_embeddings for {DS}"):
        load_vectors(store, DS, [TOKEN])
    with pytest.raises(ValueError, match="not complete.*run the token_embeddings task"):
        load_vectors(store, NEXT)


def test_a_pipeline_given_rows_encodes_them(test_size_models):
    pipeline = load_diffusion_pipeline(Path(test_size_models.diffusion), "cpu", torch.float32)
    vector = torch.ones(pipeline.text_encoder.config.hidden_size)
    apply_token_embeddings(pipeline, {TOKEN: vector})
    row = pipeline.text_encoder.get_input_embeddings().weight[pipeline.tokenizer.convert_tokens_to_ids(TOKEN)]
    assert torch.equal(row, vector)
    assert json.dumps(pipeline.tokenizer.tokenize(f"x {TOKEN} y")).count(TOKEN) == 1


def test_a_damaged_version_is_trained_again_and_a_damaged_parent_is_passed_over(test_size_models, tmp_path, caplog):
    third = "2026-11-22"
    settings = stage_settings(tmp_path / "pmg", test_size_models, steps_per_token=0)
    store = open_store(settings)
    for night in (DS, NEXT):
        write_run(settings, night, with_images=False)
        train_token_embeddings(settings, night)
    # Tonight's own version, damaged: a rerun trains it again instead of serving the damage.
    key = read_version(store, NEXT)["tokens"][TOKEN]["file"]
    store.put_bytes(key, b"\x00" * 10)
    again = train_token_embeddings(settings, NEXT)
    assert again["trained_now"] and load_vectors(store, NEXT, [TOKEN])
    assert "training them again" in caplog.text
    # Last night's version damaged: the next night starts from the one before and says so.
    store.put_bytes(read_version(store, NEXT)["tokens"][TOKEN]["file"], b"\x00" * 10)
    write_run(settings, third, with_images=False)
    summary = train_token_embeddings(settings, third)
    assert summary["warm_start_from"] == DS
    assert f"token embeddings {NEXT} are damaged" in caplog.text
