"""A generate worker fit for a real night, exercised on CPU: out-of-memory recovery, the image-safety gate
with the real classifier, the pipeline's own safety checker, models loaded once per process, and uploads
that must land before the record names them."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import pmg_tasks.generate.shard as shard_module
from pmg_tasks import layout
from pmg_tasks.generate import generate_shard
from pmg_tasks.generate.creatives import PersonalizedCreatives
from pmg_tasks.generate.safety import NudeNetClassifier
from pmg_tasks.store import open_store, read_frame
from tests.generate.test_shard import (
    AUDIENCE,
    DS,
    HEADLINES,
    REQUESTS,
    SHARD,
    result_of,
    shard_settings,
    write_inputs,
)

IDENTITY = ["signature", "user_id", "rank", "candidate", "creative_id", "image_key", "seed"]


class PipelineWrapper:
    """The real pipeline, with something done to its calls: every attribute is the pipeline's own."""

    def __init__(self, pipeline, before=None, after=None):
        self.__dict__["_pipeline"], self.__dict__["_before"], self.__dict__["_after"] = pipeline, before, after
        self.__dict__["calls"] = []

    def __getattr__(self, name):
        return getattr(self._pipeline, name)

    def __call__(self, **kwargs):
        seeds = [g.initial_seed() for g in kwargs["generator"]]
        self.calls.append(len(seeds))
        if self._before:
            self._before(seeds)
        output = self._pipeline(**kwargs)
        if self._after:
            self._after(seeds, output)
        return output


@pytest.fixture(autouse=True)
def fresh_worker():
    """Each test starts with no models loaded in this process (the cache outlives a shard on purpose)."""
    shard_module.release_worker_models()
    yield
    shard_module.release_worker_models()


@pytest.fixture(scope="module")
def reference(test_size_models, tmp_path_factory):
    """The shard generated without any interference: what every test compares against."""
    shard_module.release_worker_models()
    settings = shard_settings(tmp_path_factory.mktemp("reference"), test_size_models)
    write_inputs(settings)
    generate_shard(settings, DS, SHARD)
    shard_module.release_worker_models()
    return result_of(settings)


def wrap_worker(monkeypatch, **hooks) -> list[PipelineWrapper]:
    """Every worker model load puts a PipelineWrapper around the pipeline; returns them as they come."""
    wrappers: list[PipelineWrapper] = []
    real = PersonalizedCreatives.from_models

    def from_models(*args, **kwargs):
        creatives = real(*args, **kwargs)
        creatives.pipeline = PipelineWrapper(creatives.pipeline, **hooks)
        wrappers.append(creatives.pipeline)
        return creatives

    monkeypatch.setattr(PersonalizedCreatives, "from_models", from_models)
    return wrappers


def test_out_of_memory_halves_the_batch_and_loses_nothing(test_size_models, tmp_path, reference, monkeypatch):
    def too_big(seeds):
        if len(seeds) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    wrappers = wrap_worker(monkeypatch, before=too_big)
    settings = shard_settings(tmp_path / "pmg", test_size_models, batch_size=8)
    write_inputs(settings)
    generate_shard(settings, DS, SHARD)
    calls = wrappers[0].calls
    # 8 failed, then 4 failed, then pairs all the way: 13 candidates in batches of at most 2.
    assert calls[:2] == [8, 4] and set(calls[2:]) <= {1, 2} and sum(calls[2:]) == int(REQUESTS["candidates"].sum())
    result = result_of(settings)
    pd.testing.assert_frame_equal(result[IDENTITY], reference[IDENTITY])
    pd.testing.assert_frame_equal(result[["d_p", "d_t", "z"]], reference[["d_p", "d_t", "z"]], atol=1e-4)


def test_out_of_memory_at_batch_size_one_names_what_ran_out(test_size_models, tmp_path, monkeypatch):
    def always(seeds):
        raise torch.OutOfMemoryError("CUDA out of memory")

    wrap_worker(monkeypatch, before=always)
    settings = shard_settings(tmp_path / "pmg", test_size_models, batch_size=4)
    write_inputs(settings)
    with pytest.raises(RuntimeError, match=r"even 1 image of 32x32 at batch size 1 \(no CUDA device.*IMAGE_SIZE"):
        generate_shard(settings, DS, SHARD)
    assert not open_store(settings).list_keys(layout.creatives_prefix(DS))


def face_photo():
    """A real photograph of a face (matplotlib ships it), cropped square at 128 px: what NudeNet really
    detects, as FACE_FEMALE (it finds no face in it much smaller)."""
    import matplotlib.cbook
    from PIL import Image

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as photo:
        width, height = photo.size
        top = (height - width) // 2
        return photo.convert("RGB").crop((0, top, width, top + width)).resize((128, 128))


def test_the_real_classifier_flags_a_face_only_where_its_class_is_blocked():
    from PIL import Image

    strict = NudeNetClassifier(["FACE_FEMALE"], min_score=0.3)
    assert strict(face_photo()) == strict(face_photo()) and not strict(face_photo()).safe
    assert strict(face_photo()).reason == "nudenet:FACE_FEMALE"
    assert strict(Image.new("RGB", (64, 64), (30, 120, 200))).safe
    # The default policy blocks explicit exposure only: a portrait passes.
    from pmg_tasks.settings import Safety

    default = Safety()
    assert NudeNetClassifier(default.blocked_classes, default.min_score)(face_photo()).safe


def paste_face_on(seeds_to_spoil: set[int]):
    def after(seeds, output):
        for i, seed in enumerate(seeds):
            if seed in seeds_to_spoil:
                output.images[i] = face_photo()

    return after


def test_a_flagged_candidate_gives_its_place_to_the_next_best(test_size_models, tmp_path, reference, monkeypatch):
    """The candidate most of the dress's users liked best becomes a face the classifier flags: nobody gets
    it, everyone else keeps what they had, and the flagged image is never written."""
    settings = shard_settings(tmp_path / "ref", test_size_models)
    write_inputs(settings)
    generate_shard(settings, DS, SHARD)
    unguarded = result_of(settings)
    dress = unguarded[(unguarded["signature"] == "sig-red-dress") & (unguarded["rank"] == 1)]
    spoiled_seed = int(dress["seed"].mode()[0])
    shard_module.release_worker_models()

    wrap_worker(monkeypatch, after=paste_face_on({spoiled_seed}))
    guarded = shard_settings(tmp_path / "guarded", test_size_models)
    guarded = guarded.model_copy(update={"safety": guarded.safety.model_copy(
        update={"blocked_classes": ["FACE_FEMALE"], "min_score": 0.3})})  # fmt: skip
    write_inputs(guarded)
    summary = generate_shard(guarded, DS, SHARD)
    result = result_of(guarded)
    assert spoiled_seed not in set(result["seed"])
    had_it = set(dress.loc[dress["seed"] == spoiled_seed, "user_id"])
    first = result[(result["signature"] == "sig-red-dress") & (result["rank"] == 1)].set_index("user_id")
    before = dress.set_index("user_id")["seed"]
    # Only the spoiled candidate changed: whoever did not have it keeps their creative.
    for user_id in sorted(set(first.index) - had_it):
        assert first.at[user_id, "seed"] == before[user_id], user_id
    # The face drew at least the users who had its place; they were given something else, and said so.
    replaced = set(first.index[first["safety"] == "replaced"])
    assert replaced and replaced <= set(first.index)
    assert summary["safety"]["flagged"] == {"nudenet:FACE_FEMALE": 1}
    assert summary["safety"]["replaced_users"] == len(replaced) and summary["safety"]["blocked_requests"] == 0
    store = open_store(guarded)
    written = {k for k in store.list_keys(layout.creatives_prefix(DS)) if k.endswith(".png")}
    assert written == set(result["image_key"])


def test_a_request_with_too_few_safe_candidates_is_blocked_and_reported(test_size_models, tmp_path, monkeypatch):
    from pmg_tasks.generate.shard import candidate_seeds
    from tests.generate.test_shard import _request

    coffee = next(r for r in REQUESTS.itertuples() if r.signature == "sig-coffee")
    spoiled = set(candidate_seeds(_request(coffee)))
    wrap_worker(monkeypatch, after=paste_face_on(spoiled))
    settings = shard_settings(tmp_path / "pmg", test_size_models)
    settings = settings.model_copy(update={"safety": settings.safety.model_copy(
        update={"blocked_classes": ["FACE_FEMALE"], "min_score": 0.3})})  # fmt: skip
    write_inputs(settings)
    summary = generate_shard(settings, DS, SHARD)
    result = result_of(settings)
    blocked = result[result["signature"] == "sig-coffee"]
    assert blocked["rank"].tolist() == [0] and blocked["safety"].tolist() == ["blocked"]
    assert blocked["creative_id"].tolist() == [""]
    assert summary["safety"]["blocked_requests"] == 1 and summary["safety"]["blocked_users"] == 1
    assert summary["choices"] == len(result) - 1
    # A retry reads the blocked request from the record: nothing is drawn again.
    again = generate_shard(settings, DS, SHARD)
    assert again["generated"] == 0


def test_the_pipelines_own_safety_checker_flags_are_obeyed(test_size_models, tmp_path, monkeypatch):
    """A model that ships a safety checker: a tiny StableDiffusionSafetyChecker whose concepts catch
    everything, so every candidate comes back flagged by the pipeline itself."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    real = PersonalizedCreatives.from_models

    def with_checker(*args, **kwargs):
        creatives = real(*args, **kwargs)
        config = CLIPConfig(
            text_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2},
            vision_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1,
                           "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
            projection_dim=8,
        )  # fmt: skip
        checker = StableDiffusionSafetyChecker(config).eval()
        with torch.no_grad():
            checker.concept_embeds_weights.fill_(-10.0)  # every image is "close" to a concept
        creatives.pipeline.safety_checker = checker
        creatives.pipeline.feature_extractor = CLIPImageProcessorPil(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        )
        return creatives

    monkeypatch.setattr(PersonalizedCreatives, "from_models", with_checker)
    settings = shard_settings(tmp_path / "pmg", test_size_models)
    settings = settings.model_copy(update={"safety": settings.safety.model_copy(update={"classifier": "none"})})
    write_inputs(settings)
    summary = generate_shard(settings, DS, SHARD)
    assert summary["safety"]["blocked_requests"] == 3 and summary["choices"] == 0
    assert summary["safety"]["flagged"]["pipeline_safety_checker"] > 0
    assert not [k for k in open_store(settings).list_keys(layout.creatives_prefix(DS)) if k.endswith(".png")]


def test_a_worker_loads_its_models_once_for_several_shards(test_size_models, tmp_path, monkeypatch):
    loads = []
    real = PersonalizedCreatives.from_models
    monkeypatch.setattr(PersonalizedCreatives, "from_models", lambda *a, **k: loads.append(1) or real(*a, **k))
    settings = shard_settings(tmp_path / "pmg", test_size_models)
    store = open_store(settings)
    for index in (0, 1):
        write_table_of(store, index, REQUESTS.iloc[[index]], AUDIENCE[AUDIENCE["signature"] == REQUESTS["signature"][index]])
    write_inputs(settings)
    generate_shard(settings, DS, 0)
    generate_shard(settings, DS, 1)
    assert len(loads) == 1
    # Other model versions (here: another CLIP) release the old models and load anew.
    other = settings.model_copy(update={"models": test_size_models.model_copy(update={"clip": _copy_clip(test_size_models, tmp_path)})})
    store.delete_prefix(layout.run_key(DS, "generated/"))
    generate_shard(other, DS, 0)
    assert len(loads) == 2


def test_an_upload_that_fails_fails_the_shard_before_the_record_names_it(test_size_models, tmp_path, monkeypatch):
    settings = shard_settings(tmp_path / "pmg", test_size_models, checkpoint_requests=1)
    write_inputs(settings)
    store_class = type(open_store(settings))
    real_put = store_class.put_bytes
    uploads = []

    def flaky(self, key, data):
        if key.endswith(".png"):
            uploads.append(key)
            if len(uploads) == 2:
                raise OSError("connection reset by peer")
        return real_put(self, key, data)

    monkeypatch.setattr(store_class, "put_bytes", flaky)
    with pytest.raises(OSError, match="connection reset"):
        generate_shard(settings, DS, SHARD)
    store = open_store(settings)
    parts = store.list_keys(layout.shard_record_prefix(DS, SHARD))
    named = {key for part in parts for key in read_frame(store, part)["image_key"]}
    assert uploads[1] not in named and all(store.exists(key) for key in named)
    monkeypatch.setattr(store_class, "put_bytes", real_put)
    summary = generate_shard(settings, DS, SHARD)
    assert summary["skipped"] >= len(parts) and all(store.exists(k) for k in result_of(settings)["image_key"])


def write_table_of(store, index, requests, audience):
    from pmg_tasks.store import write_table

    write_table(store, layout.shard_key(DS, index), requests.reset_index(drop=True))
    write_table(store, layout.shard_audience_key(DS, index), audience.reset_index(drop=True))
    write_table(store, layout.run_key(DS, "headlines.parquet"), HEADLINES)


def _copy_clip(models, tmp_path) -> str:
    import json
    import shutil

    copy = tmp_path / "clip-copy"
    shutil.copytree(models.clip, copy)
    config = json.loads((copy / "config.json").read_text())
    config["logit_scale_init_value"] = 2.5  # a different model version, same weights
    (copy / "config.json").write_text(json.dumps(config))
    return str(copy)

