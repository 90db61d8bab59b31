"""Planning: one generation per (campaign, segment, target item) shared by the segment's users, or one per
user; prompts within the text encoder's budget; denied words nowhere; shards that cover everything."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pmg_tasks.layout import run_key, shard_audience_key, shard_key
from pmg_tasks.models.diffusion import prompt_tokenizer
from pmg_tasks.plan import plan_generation
from pmg_tasks.plan.prompt import PromptParts, PromptTooLong, fit_prompt, token_count
from pmg_tasks.settings import Settings
from pmg_tasks.store import open_store, read_frame, read_json
from pmg_tasks.text_safety import Denylist
from tests.conftest import DS
from tests.pipeline import run_stages_until


@pytest.fixture(scope="module")
def planned_home(tmp_path_factory, test_size_models) -> Path:
    """A seeded shop run through every stage up to plan, once for the whole module."""
    from pmg_tasks.cli import seed_demo

    home = tmp_path_factory.mktemp("planned") / "pmg"
    settings = Settings(home=home, models=test_size_models)
    seed_demo(settings, DS, users=60, items=40, days=7, overwrite_campaigns=True)
    run_stages_until(settings, DS, "plan")
    return home


@pytest.fixture
def planned(planned_home, tmp_path, test_size_models) -> Settings:
    """A private copy of the planned run, so a test may change it."""
    home = tmp_path / "pmg"
    shutil.copytree(planned_home, home)
    return Settings(home=home, models=test_size_models)


def outputs(settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    store = open_store(settings)
    return (
        read_frame(store, run_key(DS, "requests.parquet")),
        read_frame(store, run_key(DS, "generations.parquet")),
        read_json(store, run_key(DS, "stats/plan.json")),
    )


def edit_campaigns(settings: Settings, **changes) -> None:
    """Apply `changes` (field -> value) to every campaign of the campaigns folder."""
    for path in Path(settings.campaigns_file).glob("*.yaml"):
        campaign = yaml.safe_load(path.read_text())
        campaign.update(changes)
        path.write_text(yaml.safe_dump(campaign))


def test_a_segment_shares_one_generation_per_target_item(planned):
    requests, generations, stats = outputs(planned)
    # The demo campaigns: 12 users x 2 items, and 8 Sci-Fi/Action users x 1 item.
    assert requests.groupby("campaign_id").size().to_dict() == {"sci-fi-weekend": 8, "winter-classics": 24}
    # Exactly one generation per (campaign, segment, target item), and every user of it is of that segment.
    segments = requests.groupby(["campaign_id", "segment_id", "item_id"])["signature"].nunique()
    assert (segments == 1).all()
    assert len(generations) == len(segments) == stats["generations"]
    assert requests.groupby("signature")["segment_id"].nunique().eq(1).all()
    # The demo's segments do hold several users: sharing happened.
    assert len(generations) < len(requests)
    assert set(generations["personalization"]) == {"segment"}
    assert stats["requested_creatives"] == int(requests["variants"].sum())
    assert stats["creatives_per_generation"] == pytest.approx(stats["requested_creatives"] / len(generations), abs=1e-3)


def test_a_segments_prompt_carries_its_tokens_and_each_user_keeps_their_own_keywords(planned):
    requests, generations, _ = outputs(planned)
    store = open_store(planned)
    tokens = read_frame(store, run_key(DS, "preference_tokens.parquet")).set_index("user_id")
    keywords = read_frame(store, run_key(DS, "keywords.parquet")).set_index("user_id")["preference_keywords"]
    prompts = generations.set_index("signature")
    for request in requests.itertuples():
        segment_tokens = list(tokens.at[request.user_id, "segment_tokens"])
        assert list(prompts.at[request.signature, "preference_tokens"]) == segment_tokens
        for token in segment_tokens:
            assert token in prompts.at[request.signature, "prompt"]
        # d_p is measured against the user's own keywords, not the segment's.
        assert list(request.preference_keywords) == list(keywords[request.user_id])
        assert request.preference_text == ", ".join(keywords[request.user_id])


def test_user_personalization_generates_per_user_with_their_keywords(planned):
    edit_campaigns(planned, personalization="user")
    plan_generation(planned, DS)
    requests, generations, stats = outputs(planned)
    store = open_store(planned)
    tokens = read_frame(store, run_key(DS, "preference_tokens.parquet")).set_index("user_id")
    assert len(generations) == len(requests) == stats["generations"]
    prompts = generations.set_index("signature")
    for request in requests.itertuples():
        generation = prompts.loc[request.signature]
        assert generation["owner_user_id"] == request.user_id
        assert list(generation["preference_tokens"]) == list(tokens.at[request.user_id, "tokens"])
        assert request.preference_keywords[0] in generation["prompt"]


def test_every_prompt_fits_the_text_encoder_with_tokens_and_title_whole(planned, test_size_models):
    _, generations, stats = outputs(planned)
    store = open_store(planned)
    items = read_frame(store, run_key(DS, "items.parquet")).set_index("item_id")
    item_words = read_frame(store, run_key(DS, "item_keywords.parquet")).set_index("item_id")["keywords"]
    in_use = sorted({t for ts in read_frame(store, run_key(DS, "preference_tokens.parquet"))["tokens"] for t in ts})
    tokenizer = prompt_tokenizer(Path(test_size_models.diffusion), in_use)
    for generation in generations.itertuples():
        assert token_count(tokenizer, generation.prompt) <= tokenizer.model_max_length == 77
        assert token_count(tokenizer, generation.negative_prompt) <= 77
        assert items.at[generation.item_id, "title"] in generation.prompt
        assert all(token in generation.prompt for token in generation.preference_tokens)
        # What was dropped is the tail of the ranked lists, and it was counted.
        kept = list(generation.target_keywords)
        assert kept == list(item_words[generation.item_id])[: len(kept)]
        assert generation.dropped_keywords >= len(item_words[generation.item_id]) - len(kept)
    # The test-size tokenizer spells catalog words in many pieces, so the demo's prompts do overflow.
    assert stats["dropped_keywords"] == int(generations["dropped_keywords"].sum()) > 0


def test_the_budget_drops_the_lowest_ranked_keyword_first_and_never_a_token(test_size_models):
    tokenizer = prompt_tokenizer(Path(test_size_models.diffusion), ["<pref_txt_0_1>", "<pref_img_0_2>"])
    parts = PromptParts(
        style="studio lighting", title="Red Dress", target_words=("red", "summer", "dress", "cotton"),
        preference_tokens=("<pref_txt_0_1>", "<pref_img_0_2>"), preference_words=("bold", "vintage", "leather"),
    )  # fmt: skip
    full = fit_prompt(parts, tokenizer)
    assert full.dropped_keywords == 0 and full.text == (
        "studio lighting, Red Dress, red, summer, dress, cotton, in the taste of <pref_txt_0_1> <pref_img_0_2>, "
        "bold, vintage, leather"
    )
    budget = full.tokens - 1
    fitted = fit_prompt(parts, tokenizer, budget)
    assert fitted.tokens <= budget and fitted.dropped_keywords >= 1
    # The target's list is longer, so its last keyword went first; the tokens stayed.
    assert fitted.parts.target_words == ("red", "summer", "dress")
    assert fitted.parts.preference_words == parts.preference_words
    tight = fit_prompt(parts, tokenizer, token_count(tokenizer, "studio lighting, Red Dress, in the taste of "
                                                                "<pref_txt_0_1> <pref_img_0_2>"))
    assert tight.parts.target_words == () and tight.parts.preference_words == ()
    assert tight.parts.preference_tokens == parts.preference_tokens
    with pytest.raises(PromptTooLong, match="shorten the campaign's style"):
        fit_prompt(parts, tokenizer, 5)


def test_denied_words_reach_no_prompt_title_style_keyword_or_descriptor(planned):
    _, generations, _ = outputs(planned)
    store = open_store(planned)
    descriptors = read_frame(store, run_key(DS, "token_descriptors.parquet"))
    # Deny a word of a title, one of the style, a descriptor word and one of the scenario's negative prompt.
    title_word = generations["title"].iloc[0].split()[-1]
    descriptor_word = next(w for words in descriptors["top_keywords"] for w in words if w in " ".join(generations["prompt"]))
    denied = [title_word, "neon", descriptor_word, "watermark", "gore"]
    edit_campaigns(planned, denylist=denied)
    plan_generation(planned, DS)
    requests, generations, _ = outputs(planned)
    denylist = Denylist(denied)
    texts = [*generations["prompt"], *generations["negative_prompt"], *generations["target_text"],
             *requests["preference_text"], *generations["title"], *generations["style"]]
    texts += [w for column in ("target_keywords", "preference_words") for ws in generations[column] for w in ws]
    assert texts and not [t for t in texts if denylist.denies(t)]
    # Whole words only: "retro-futurist" stays in the sci-fi style although "neon" went.
    assert generations.loc[generations["campaign_id"] == "sci-fi-weekend", "style"].eq("retro-futurist").all()


def test_the_negative_prompt_is_the_campaigns_else_the_scenarios(planned):
    _, generations, _ = outputs(planned)
    assert set(generations["negative_prompt"]) == {"blurry, low quality, watermark, text artifacts, deformed faces"}
    edit_campaigns(planned, negative_prompt="blurry, extra fingers")
    plan_generation(planned, DS)
    _, generations, _ = outputs(planned)
    assert set(generations["negative_prompt"]) == {"blurry, extra fingers"}


def test_shards_cover_every_generation_once_with_its_audience_and_stay_under_the_map_limit(planned):
    settings = planned.model_copy(update={"generation": planned.generation.model_copy(
        update={"requests_per_shard": 1, "max_shards": 5})})  # fmt: skip
    shards = plan_generation(settings, DS)
    requests, generations, _ = outputs(settings)
    store = open_store(settings)
    assert len(shards) <= 5
    tables = pd.concat([read_frame(store, shard_key(DS, i)) for i in shards])
    assert tables["signature"].is_unique and set(tables["signature"]) == set(generations["signature"])
    audiences = pd.concat([read_frame(store, shard_audience_key(DS, i)) for i in shards])
    expected = requests[["signature", "user_id", "preference_text"]].drop_duplicates(["signature", "user_id"])
    assert len(audiences) == len(expected)
    assert set(zip(audiences["signature"], audiences["user_id"], strict=True)) == set(
        zip(expected["signature"], expected["user_id"], strict=True)
    )


def test_an_unknown_target_item_skips_that_campaign_and_names_it(planned):
    path = Path(planned.campaigns_file) / "winter-classics.yaml"
    path.write_text(path.read_text().replace("target_items: [", "target_items: [m-nope, ", 1))
    plan_generation(planned, DS)
    requests, _, stats = outputs(planned)
    # The night goes on without it: the other campaign is planned, and the plan says why it is missing.
    assert set(requests["campaign_id"]) == {"sci-fi-weekend"} == set(stats["campaigns"])
    [skipped] = stats["skipped_campaigns"]
    assert (skipped["campaign_id"], skipped["file"], skipped["field"]) == (
        "winter-classics", "winter-classics.yaml", "target_items")
    assert "targets items not in the catalog: ['m-nope']" in skipped["message"]


def test_a_broken_campaign_file_is_skipped_and_the_others_run(planned):
    (Path(planned.campaigns_file) / "x-y.yaml").write_text("start_date: 2026-11-01\nvariants: many\n")
    plan_generation(planned, DS)
    requests, _, stats = outputs(planned)
    assert set(requests["campaign_id"]) == {"sci-fi-weekend", "winter-classics"}
    assert {(p["file"], p["field"]) for p in stats["skipped_campaigns"]} >= {("x-y.yaml", "variants"),
                                                                              ("x-y.yaml", "end_date")}


def test_audience_rules_and_the_campaigns_own_pixels_reach_the_shards(planned):
    edit_campaigns(planned, audience={"min_engagement": 15, "recency_days": 2}, image_size=48, inference_steps=3)
    plan_generation(planned, DS)
    requests, generations, _ = outputs(planned)
    histories = read_frame(open_store(planned), run_key(DS, "histories.parquet")).set_index("user_id")
    reached = histories.loc[requests["user_id"].unique()]
    assert len(reached) > 0
    assert (reached["engagement"] >= 15).all() and (reached["last_event_date"] >= "2026-11-19").all()
    assert len(reached) < len(histories[(histories["engagement"] >= 1)])
    shard = read_frame(open_store(planned), run_key(DS, "shards/shard-00000.parquet"))
    assert set(shard["image_size"]) == {48} and set(shard["inference_steps"]) == {3}
    assert set(generations["image_size"]) == {48}


def test_users_whose_prompts_differ_only_in_dropped_keywords_share_one_generation(test_size_models):
    """Per-user personalization still generates a prompt once: two users whose keyword lists differ only
    past what the budget keeps get the same prompt, so one generation with both in its audience."""
    from pmg_tasks.campaigns import Campaign
    from pmg_tasks.plan.stage import _PlanInputs, plan_campaign
    from pmg_tasks.settings import Generation

    shared = [f"taste{i}" for i in range(40)]  # far more than 77 tokens hold
    inputs = _PlanInputs(
        histories=pd.DataFrame({"user_id": ["u1", "u2"], "categories": [["Drama"], ["Drama"]], "engagement": [5, 4]}),
        keywords={"u1": [*shared, "alpha-only"], "u2": [*shared, "beta-only"]},
        item_words={"m1": ["red", "dress"]},
        items=pd.DataFrame({"title": ["Red Dress"]}, index=pd.Index(["m1"], name="item_id")),
        tokens={"u1": (["<pref_txt_0_1>"], ["<pref_txt_0_1>"], "s1"), "u2": (["<pref_txt_0_1>"], ["<pref_txt_0_1>"], "s1")},
        descriptors={}, image_keys={}, target_reference="keywords",
    )  # fmt: skip
    campaign = Campaign(campaign_id="c", start_date="2026-11-01", end_date="2026-11-30", target_items=["m1"],
                        personalization="user")  # fmt: skip
    tokenizer = prompt_tokenizer(Path(test_size_models.diffusion), ["<pref_txt_0_1>"])
    requests, generations = plan_campaign(campaign, inputs, tokenizer, Generation(), "", DS)
    assert len(requests) == 2 and len(generations) == 1
    assert requests["signature"].nunique() == 1 and generations["users"].tolist() == [2]
    assert generations["dropped_keywords"].iloc[0] > 0


def test_campaigns_list_shows_users_and_distinct_generations_before_the_night(planned, monkeypatch, capsys):
    from pmg_tasks.cli import main

    monkeypatch.setenv("PMG_HOME", str(planned.home))
    assert main(["campaigns", "list", "--ds", DS]) == 0
    printed = capsys.readouterr().out
    _, generations, stats = outputs(planned)
    # What the plan did with the same users is what the listing said the night would cost.
    for campaign_id, figures in stats["by_campaign"].items():
        line = next(row for row in printed.splitlines() if row.startswith(campaign_id))
        assert line.split()[1] == "yes"
        assert line.split()[-3:] == [str(figures["users"]), str(len(set(generations.loc[
            generations["campaign_id"] == campaign_id, "item_id"]))), str(figures["generations"])]
    assert f"{stats['generations']} distinct generations at most" in printed
