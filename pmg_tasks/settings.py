"""The one typed settings object of pmg.

Every knob is read here, once, from `PMG_*` environment variables (nested fields with a double underscore,
e.g. `PMG_MODELS__DIFFUSION=/models/sd`). Nothing deeper in the code reads the environment: stages take a
`Settings` argument, so a test builds one explicitly and a task builds one with `Settings()`.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Literal, NamedTuple

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# catalog: keywords from item metadata, no model; the others are LLMs (see docs/keywords.md).
KeywordBackend = Literal["catalog", "transformers", "openai", "vllm"]


class ModelPaths(BaseModel):
    """Where each model role loads from: a local directory written by `save_pretrained` (or a hub id
    on machines that have a hub). `pmg models build-test-size --out DIR` writes all three."""

    diffusion: str = ""
    clip: str = ""
    llm: str = ""


# Keyword backends that load a model onto the machine that runs the task: on a cluster, a GPU worker's job.
# catalog needs no model and openai calls a served one, so both run on any worker.
GPU_KEYWORD_BACKENDS = ("transformers", "vllm")


class Pools(BaseModel):
    """Airflow pools and Celery queues that cap and place the expensive stages (docs/scale-out.md).
    `pmg pools` creates the pools with these slot counts; the DAG caps its tasks with the same numbers."""

    gpu: str = "pmg_gpu"
    gpu_slots: int = Field(1, ge=1, description="GPU tasks at once across all workers: one per GPU")
    llm: str = "pmg_llm"
    llm_slots: int = Field(1, ge=1, description="keyword/headline tasks at once on a model-free or served backend")
    # Celery queue that GPU workers listen on; "default" runs everything on any worker (a laptop).
    gpu_queue: str = "default"
    default_queue: str = Field("default", description="Airflow's [operators] default_queue: the CPU workers' queue")


class Retries(BaseModel):
    """How Airflow retries a failed task (bad data and bad campaign files fail without retrying)."""

    per_task: int = Field(2, ge=0, description="Airflow retries per task (tests set 0 to fail fast)")
    delay_s: int = Field(120, ge=1, description="first retry delay; doubles each attempt")


class Placement(NamedTuple):
    """A task's Airflow pool, Celery queue, the most of its instances that run at once, and the pool slots
    one instance takes (a GPU per slot: a vLLM model split over N GPUs holds N)."""

    pool: str
    queue: str
    slots: int
    pool_slots: int = 1


class Generation(BaseModel):
    """How creatives are generated and chosen (PMG section 3.4; docs/generation.md)."""

    candidates_per_request: int = Field(2, ge=1, description="k images generated per request")
    batch_size: int = Field(4, ge=1, description="images per diffusion forward pass")
    inference_steps: int = Field(2, ge=1)
    guidance_scale: float = 5.0
    image_size: int = Field(64, ge=8, description="height and width in pixels")
    requests_per_shard: int = Field(16, ge=1, description="unique generation requests per GPU task")
    max_shards: int = Field(256, ge=1, description="keeps the map far below Airflow's max_map_length")
    default_alpha: float = Field(0.5, ge=0.0, le=1.0)
    # What d_t compares a candidate with: the target item's keywords (PMG), its catalog image where the store
    # has one, or both (the geometric mean of the two similarities). Items without an image use keywords.
    target_reference: Literal["keywords", "image", "both"] = "keywords"
    checkpoint_requests: int = Field(
        8, ge=1, description="finished requests a shard records at a time, so a retry resumes after them"
    )
    headline_chars: int = Field(80, ge=16, le=200, description="longest headline written beside a creative")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto: bfloat16 on a GPU (float16 where the model asks), float32 on a CPU"
    )
    compile: bool = Field(False, description="torch.compile the UNet once per worker process (GPU workers)")


# NudeNet's classes that stop a creative: explicit exposure. Covered or non-sexual classes (faces, feet) are
# left to a campaign's own policy.
EXPLICIT_CLASSES = (
    "FEMALE_GENITALIA_EXPOSED", "FEMALE_BREAST_EXPOSED", "MALE_GENITALIA_EXPOSED", "BUTTOCKS_EXPOSED",
    "ANUS_EXPOSED",
)  # fmt: skip


class Safety(BaseModel):
    """Image safety on every kept candidate (pmg_tasks/generate/safety.py)."""

    enabled: bool = True
    classifier: Literal["nudenet", "none"] = Field("nudenet", description="offline classifier; none: the pipeline's own checker only")
    blocked_classes: list[str] = Field(default_factory=lambda: list(EXPLICIT_CLASSES))
    min_score: float = Field(0.5, ge=0.0, le=1.0, description="a detection at or above this flags the image")


class CampaignLimits(BaseModel):
    """What a campaign may ask of the GPU: its own image size and steps stay within these (docs/campaigns.md)."""

    max_image_size: int = Field(128, ge=8, description="largest image_size a campaign may set")
    max_inference_steps: int = Field(10, ge=1, description="most inference_steps a campaign may set")


class Report(BaseModel):
    """The run report (pmg_tasks/report.py)."""

    # relative: links beside the page, which work in a folder, a public bucket and through the gallery;
    # presigned: signed URLs, for a page opened straight from a private bucket (they expire).
    image_links: Literal["relative", "presigned"] = "relative"
    presign_seconds: int = Field(7 * 24 * 3600, ge=60, le=7 * 24 * 3600, description="life of a pre-signed link")


class TokenEmbeddings(BaseModel):
    """How preference tokens become words the diffusion text encoder knows (textual inversion; see
    docs/generation.md). Bounded per token, so a night's cost grows with the tokens in use, not the users."""

    steps_per_token: int = Field(2, ge=0, description="optimizer steps each token takes part in; 0: descriptors only")
    images_per_token: int = Field(4, ge=1, description="item images a token trains on, its users' most engaged first")
    batch_size: int = Field(8, ge=1, description="(token, image) pairs per optimizer step")
    learning_rate: float = Field(5e-3, gt=0)


class Keywords(BaseModel):
    """How the LLM backends extract keywords (PMG section 3.2); the backend itself is `keyword_backend`.
    See docs/keywords.md."""

    scenario: str = Field("movie_posters", description="a scenario in pmg_tasks/keywords/scenarios/")
    model: str = Field("", description="LLM path, hub id or served model name; default: models.llm")
    model_id: str = Field("", description="the model's name in cache keys; default: model")
    prompt_version: str = Field("", description="salt for the prompt version: change it to re-extract all")
    endpoint_url: str = Field("", description="OpenAI-compatible base URL (openai backend), e.g. http://vllm:8000/v1")
    api_key_env: str = Field("", description="name of the environment variable that holds the endpoint's key")
    concurrency: int = Field(8, ge=1, description="HTTP requests and cache reads in flight")
    timeout_s: float = Field(60.0, gt=0, description="per HTTP request")
    retries: int = Field(3, ge=0, description="extra attempts after a timeout, 429 or 5xx")
    backoff_s: float = Field(0.5, ge=0, description="first retry delay; doubles each attempt")
    batch_size: int = Field(16, ge=1, description="prompts per transformers generate() call")
    max_new_tokens: int = Field(128, ge=8)
    users_per_shard: int = Field(5000, ge=1, description="users per mapped keyword task")
    max_shards: int = Field(64, ge=1, description="keeps the map far below Airflow's max_map_length")
    max_failed_fraction: float = Field(0.2, ge=0.0, le=1.0, description="unanswered requests that fail a shard")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm backend")
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0, description="vllm backend")
    max_model_len: int = Field(4096, ge=256, description="vllm backend")

    def api_key(self) -> str:
        """The endpoint's key, read from the variable `api_key_env` names (never stored in settings)."""
        import os

        return os.environ.get(self.api_key_env, "") if self.api_key_env else ""


class S3(BaseModel):
    """How the store reaches S3 (pmg_tasks/s3_client.py). Inside Airflow through a connection, whose
    `endpoint_url` extra serves any S3-compatible server; outside, boto3's own credentials and
    `s3_endpoint_url`."""

    conn_id: str = Field("aws_default", description="Airflow connection; used where it is defined")
    region: str = Field("", description="region outside Airflow; empty: boto3's default")
    upload_threads: int = Field(16, ge=1, le=128, description="uploads in flight at once per store")
    max_attempts: int = Field(10, ge=1, description="botocore attempts per request (adaptive retry mode)")
    multipart_threshold_mb: int = Field(16, ge=5, description="objects from this size upload in parts")
    multipart_chunk_mb: int = Field(16, ge=5, description="part size of a multipart upload")
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(60.0, gt=0)


class Publishing(BaseModel):
    """What publish writes besides the manifests (docs/manifest.md)."""

    warehouse_table: bool = Field(True, description="upsert the manifest rows into generated_creatives")


# Minutes each stage of pmg_nightly may run before Airflow stops it, sized from the production profile's
# nights with room to spare: a task stuck on a dead connection fails (and retries) instead of hanging.
STAGE_TIMEOUTS_MIN = {
    "run_date": 5, "campaigns": 5, "extract": 60, "validate": 30, "histories": 30, "keyword_shards": 10, "keywords": 120,
    "merge_keywords": 15, "preference_tokens": 90, "token_embeddings": 120, "plan": 30, "headlines": 60,
    "generate": 180, "publish": 30,
}  # fmt: skip


class Watching(BaseModel):
    """How an unwatched night tells people about itself (docs/operations.md): its deadline, timeouts and the
    notifier that failure, retry and missed-deadline alerts go through."""

    schedule: str = Field(
        "0 2 * * *", pattern=r"^$|^\S+ \S+ \S+ \S+ \S+$",
        description="cron (UTC) the nightly run starts on; empty: it runs only when triggered (a staging or test "
        "cluster, where nothing should start on its own)",
    )
    finish_by_utc: str = Field(
        "07:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$",
        description="HH:MM UTC the night must have finished by; later, the deadline alert fires",
    )
    finish_within_min: int = Field(
        0, ge=0, description="minutes from when a run is queued to its deadline; 0: from the schedule's start "
        "time to finish_by_utc (a triggered-only night with 0 has no deadline)",
    )
    deadline: bool = Field(True, description="the DeadlineAlert on the DAG; `pmg run` turns it off (docs/operations.md)")
    dagrun_timeout_h: float = Field(10.0, gt=0, description="a run still going after this many hours fails")
    task_timeouts_min: dict[str, int] = Field(
        default_factory=lambda: dict(STAGE_TIMEOUTS_MIN), description="execution timeout per task, minutes"
    )
    default_task_timeout_min: int = Field(60, ge=1, description="tasks task_timeouts_min does not name")
    notifier: str = Field(
        "pmg_tasks.watch.alerts.LogNotifier",
        description="dotted path of an Airflow notifier class, e.g. airflow.providers.smtp.notifications.smtp.SmtpNotifier",
    )
    notifier_kwargs: dict[str, str | list[str]] = Field(
        default_factory=dict, description="the notifier's arguments, e.g. {\"to\": \"oncall@example.com\"}"
    )


class Validation(BaseModel):
    """What event validation counts against the bad-data threshold, and which dates could be real
    (docs/warehouse.md, "Validation rules")."""

    exact_duplicates_exempt: bool = Field(
        True, description="exact copies of an event (same event_id, same content: a redelivery) are quarantined "
        "but not counted toward max_bad_fraction; near-duplicates (same id, other content) always count",
    )
    plausible_since: date = Field(
        date(2000, 1, 1), description="events dated before this, or after now + 1 day, lie outside every run's "
        "window: each run counts them in the warehouse and reports them",
    )


class Preferences(BaseModel):
    """The preference GNN and its discrete tokens (DPPMG; docs/preference_graph.md has the measurements
    behind the defaults)."""

    dim: int = Field(128, ge=4, description="embedding size of users, items and token codes")
    layers: int = Field(3, ge=1)
    epochs: int = Field(40, ge=1, description="most epochs of a full retrain; early stopping ends most sooner")
    learning_rate: float = Field(0.01, gt=0, description="Adam step size of a full (cold) training")
    batch_size: int = Field(8192, ge=1, description="BPR pairs per step")
    negative_candidates: int = Field(8, ge=1, description="random items per positive; the hardest is the negative")
    l2: float = Field(1e-4, ge=0)
    recency_half_life: float = Field(20.0, ge=0, description="a user's interactions until an edge weighs half; 0: off")
    validation_fraction: float = Field(0.1, ge=0, lt=1, description="each user's latest interactions held out")
    validation_min_items: int = Field(10, ge=2, description="users with fewer items hold nothing out")
    patience: int = Field(8, ge=1, description="epochs without a better validation Recall@20 before stopping")
    warm_learning_rate: float = Field(0.006, gt=0, description="Adam step size of a nightly warm start")
    warm_epochs: int = Field(3, ge=1, description="epochs of a nightly warm start")
    full_retrain_weekday: int = Field(6, ge=-1, le=6, description="0=Monday..6=Sunday retrains from scratch; -1: never")
    image_features: Literal["histogram", "clip"] = Field("histogram", description="clip needs models.clip")
    token_levels: int = Field(2, ge=1, description="residual quantization levels")
    token_codes: int = Field(16, ge=2, description="codes per level (docs/preference_graph.md: why 2 x 16)")
    # A segment is the users who share their first `segment_levels` tokens of every view: 1 gives at most
    # token_codes ** views segments (256 with two views), which is what keeps generation per segment cheap.
    segment_levels: int = Field(1, ge=1, description="token levels per view that define a segment (<= token_levels)")
    # 1: the GNN runs beside the keyword stage, and on a busy 2-core machine two OpenMP threads made an Adam
    # step 12x slower than one (docs/preference_graph.md).
    torch_threads: int = Field(1, ge=1, description="intra-op threads of CPU training")

    @model_validator(mode="after")
    def _segments_within_tokens(self) -> Preferences:
        if self.segment_levels > self.token_levels:
            raise ValueError(
                f"preferences.segment_levels ({self.segment_levels}) cannot exceed "
                f"preferences.token_levels ({self.token_levels})"
            )
        return self


# Names of the flat release, kept working for one release: variable -> (group, field). Each use warns.
LEGACY_NAMES: dict[str, tuple[str, str]] = {
    **{f"gnn_{name}": ("preferences", name) for name in (
        "dim", "layers", "epochs", "learning_rate", "batch_size", "negative_candidates", "l2",
        "recency_half_life", "validation_fraction", "validation_min_items", "patience", "warm_learning_rate",
        "warm_epochs", "full_retrain_weekday", "image_features",
    )},
    **{name: ("preferences", name) for name in ("token_levels", "token_codes", "segment_levels", "torch_threads")},
    "pools__task_retries": ("retries", "per_task"),
    "pools__retry_delay_s": ("retries", "delay_s"),
}  # fmt: skip


def _take_legacy_names(data: dict) -> dict:
    """Moves values given under a flat release's name (argument or `PMG_*` variable) to their group, with a
    warning (a FutureWarning: the people who set these variables are users, whom Python shows those to); a
    value given under the new name wins."""
    import os
    import warnings

    data = dict(data)
    environ = {name.upper(): value for name, value in os.environ.items()}
    for old, (group, field) in LEGACY_NAMES.items():
        if "__" in old:  # a field that left its group: pydantic-settings hands it over inside the old group
            old_group, old_field = old.split("__")
            given = data.get(old_group)
            found = isinstance(given, dict) and old_field in given
            value = dict(given).pop(old_field) if found else None
            if found:
                data[old_group] = {k: v for k, v in given.items() if k != old_field}
        else:
            found, value = old in data, data.pop(old, None)
        variable = f"PMG_{old.upper()}"
        if not found and variable in environ:
            found, value = True, environ[variable]
        if not found:
            continue
        new = f"PMG_{group.upper()}__{field.upper()}"
        warnings.warn(
            f"{variable} (or `{old}=`) is deprecated and will be removed in the next release; use {new} "
            f"(or `{group}={{'{field}': ...}}`)", FutureWarning, stacklevel=4,
        )  # fmt: skip
        target = data.get(group)
        if isinstance(target, BaseModel):
            if field not in target.model_fields_set:
                data[group] = target.model_copy(update={field: value})
        else:
            data[group] = {field: value, **(target or {})}
    return data


# What a named profile changes from the field defaults, group by group; the field defaults are `test` (tiny
# and fast: laptops, CI, the demo). `production` is a night on real models on a GPU worker (H100/H200 class):
# SD-1.5-sized images, enough steps and candidates to choose well, shards of about 10-20 GPU minutes
# (2048 requests x 4 candidates at 7-14 images/s). Any field stays overridable on its own.
PROFILES: dict[str, dict[str, dict[str, object]]] = {
    "test": {},
    "production": {
        "generation": {
            "image_size": 512, "inference_steps": 30, "guidance_scale": 7.5, "candidates_per_request": 4,
            "batch_size": 16, "requests_per_shard": 2048, "checkpoint_requests": 32,
        },
        "token_embeddings": {"steps_per_token": 200, "images_per_token": 16, "batch_size": 16},
        "campaign_limits": {"max_image_size": 1024, "max_inference_steps": 60},
    },
}  # fmt: skip
Profile = Literal["test", "production"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PMG_", env_nested_delimiter="__", extra="ignore")

    profile: Profile = Field("test", description="named defaults: test (tiny, CPU) or production (GPU nights)")

    home: Path = Field(Path(".pmg"), description="where embedded defaults live on a laptop")
    warehouse_url: str = Field("", description="duckdb:///path.duckdb or a SQLAlchemy URL; default: DuckDB in home")
    warehouse_conn_id: str = Field("", description="an Airflow connection id; wins over warehouse_url in tasks")
    store_root: str = Field("", description="local folder or s3://bucket/prefix; default: home/store")
    s3_endpoint_url: str = Field("", description="S3 API endpoint outside Airflow; empty means AWS itself")
    campaigns_file: str = Field(
        "", description="folder of campaign files (one <id>.yaml each), or one YAML of `campaigns:`; default: home/campaigns"
    )

    models: ModelPaths = ModelPaths()
    pools: Pools = Pools()
    retries: Retries = Retries()
    preferences: Preferences = Preferences()
    validation: Validation = Validation()
    generation: Generation = Generation()
    token_embeddings: TokenEmbeddings = TokenEmbeddings()
    safety: Safety = Safety()
    campaign_limits: CampaignLimits = CampaignLimits()
    report: Report = Report()
    keywords: Keywords = Keywords()
    s3: S3 = S3()
    publishing: Publishing = Publishing()
    watching: Watching = Watching()

    lookback_days: int = Field(7, ge=1, description="extraction window: [ds - lookback + 1 day, ds + 1 day)")
    history_length: int = Field(5, ge=1, description="engaged items per user history (PMG uses 5)")
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0, description="validation stops the run above this")
    duckdb_memory_limit: str = Field("2GB", description="DuckDB working memory in extract/validate/import; beyond it DuckDB spills to disk")
    gx_max_rows: int = Field(100_000, ge=1, description="Great Expectations runs on a systematic sample above this many events")
    keyword_backend: KeywordBackend = "catalog"
    keywords_per_user: int = Field(8, ge=1)
    movielens_dir: str = Field("", description="MovieLens CSVs for the preference-graph evaluation only")
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _fill_from_profile(cls, data: object) -> object:
        """Fields a profile names take its value unless they were given (by argument or variable)."""
        if not isinstance(data, dict):
            return data
        data = _take_legacy_names(data)
        profile = data.get("profile", "test")
        if profile not in PROFILES:
            return data  # the field's own validation names the choices
        data = dict(data)
        for group, values in PROFILES[profile].items():
            given = data.get(group)
            if isinstance(given, BaseModel):
                unset = {k: v for k, v in values.items() if k not in given.model_fields_set}
                data[group] = given.model_copy(update=unset)
            else:
                data[group] = {**values, **(given or {})}
        return data

    @model_validator(mode="after")
    def _fill_defaults_from_home(self) -> Settings:
        home = self.home.expanduser().resolve()
        self.home = home
        if not self.warehouse_url and not self.warehouse_conn_id:
            self.warehouse_url = f"duckdb:///{home / 'warehouse.duckdb'}"
        if not self.store_root:
            self.store_root = str(home / "store")
        if not self.campaigns_file:
            self.campaigns_file = str(home / "campaigns")
        return self

    @property
    def keywords_need_gpu(self) -> bool:
        """The keyword backend loads an LLM into the task's own process (transformers, vllm)."""
        return self.keyword_backend in GPU_KEYWORD_BACKENDS

    def placement(self, role: Literal["gpu", "llm"]) -> Placement:
        """Where the tasks of a role run and how many at once: diffusion work (`gpu`) always on the GPU
        queue in the GPU pool; LLM work (`llm`: keywords, headlines) there too when its backend loads a
        model, else on the default queue in the LLM pool."""
        if role == "gpu":
            return Placement(self.pools.gpu, self.pools.gpu_queue, self.pools.gpu_slots)
        if self.keywords_need_gpu:
            # vLLM with tensor parallelism holds tensor_parallel_size GPUs, so that many GPU-pool slots.
            gpus = self.keywords.tensor_parallel_size if self.keyword_backend == "vllm" else 1
            if gpus > self.pools.gpu_slots:
                raise ValueError(
                    f"keywords.tensor_parallel_size={gpus} needs {gpus} GPUs in one task, but the GPU pool has "
                    f"{self.pools.gpu_slots} slots: raise PMG_POOLS__GPU_SLOTS or lower PMG_KEYWORDS__TENSOR_PARALLEL_SIZE"
                )
            return Placement(self.pools.gpu, self.pools.gpu_queue, self.pools.gpu_slots // gpus, gpus)
        return Placement(self.pools.llm, self.pools.default_queue, self.pools.llm_slots)

    def to_env(self) -> dict[str, str]:
        """These settings as PMG_* variables, so a child process (an Airflow task) sees the same ones."""
        env: dict[str, str] = {}

        def flatten(prefix: str, values: dict) -> None:
            for name, value in values.items():
                if isinstance(value, dict):
                    flatten(f"{prefix}{name.upper()}__", value)
                elif isinstance(value, list):
                    env[f"{prefix}{name.upper()}"] = json.dumps(value)  # how pydantic-settings reads a list
                else:
                    env[f"{prefix}{name.upper()}"] = str(value)

        flatten("PMG_", self.model_dump(mode="json"))
        return env

