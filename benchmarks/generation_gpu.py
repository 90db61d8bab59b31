"""Generation throughput: pmg's generate shard against a bare diffusers loop, on the same models and settings.

    .venv/bin/python -m benchmarks.generation_gpu           # writes benchmarks/results/generation_gpu.json

On a CUDA device (one run, under 8 minutes with model construction):
  (a) a bare diffusers loop (`pipeline(prompt=[...] * batch)`, bf16, SDPA, channels-last: tuned fairly) at its
      best batch size among a few, and
  (b) pmg's generate shard (`generate_shard`, production profile) on the same settings, with CLIP scoring,
      the per-user choice, the safety classifier and PNG writing included,
  both on Stable-Diffusion-1.5-shaped components with random weights (the same compute as real ones; nothing
  is downloaded) at 512x512, 25 steps, classifier-free guidance; then an SDXL-shaped bare loop at 1024x1024,
  30 steps, for comparison with published figures. The JSON names the GPU, torch and diffusers versions,
  the batch sizes and the GPU's busy share while each ran (torch.cuda.utilization samples where NVML is
  there).

Always (CPU, every machine): the same comparison on the test-size models, to catch overhead regressions.
Without CUDA the GPU part records why it did not run; nothing is estimated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "generation_gpu.json"
DS = "2026-11-20"
PROMPT = "a red summer dress on a white background, studio lighting, in the taste of bold vintage colors"


# Model construction: configs only, random weights, saved where `from_pretrained` reads them.


def build_sd15_shaped(out: Path, dtype) -> Path:
    """A Stable Diffusion 1.5-shaped pipeline (UNet 860M, VAE 84M, CLIP-L text encoder 123M)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from pmg_tasks.models.test_size import clip_tokenizer

    tokenizer = clip_tokenizer()
    with torch.device("cuda"):
        unet = UNet2DConditionModel(
            sample_size=64, cross_attention_dim=768, attention_head_dim=8,
            block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
        )  # fmt: skip
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        )  # fmt: skip
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77,
        ))  # fmt: skip
    pipeline = StableDiffusionPipeline(
        vae=vae.to(dtype), text_encoder=text_encoder.to(dtype), tokenizer=tokenizer, unet=unet.to(dtype),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipeline.save_pretrained(out)
    return out


def build_clip_l_shaped(out: Path) -> Path:
    """A CLIP ViT-L/14-shaped scorer (428M) with its processor."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from pmg_tasks.models.test_size import clip_tokenizer

    config = CLIPConfig(
        text_config={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                     "num_attention_heads": 12, "vocab_size": 49408},
        vision_config={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                       "num_attention_heads": 16, "patch_size": 14, "image_size": 224},
        projection_dim=768,
    )  # fmt: skip
    with torch.device("cuda"):
        model = CLIPModel(config)
    model.save_pretrained(out)
    CLIPProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=clip_tokenizer()).save_pretrained(out)
    return out


def build_sdxl_shaped(dtype):
    """An SDXL-shaped pipeline (UNet 2.6B, two text encoders), in memory."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pmg_tasks.models.test_size import clip_tokenizer

    with torch.device("cuda"):
        unet = UNet2DConditionModel(
            sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        ).to(dtype)  # fmt: skip
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=1024,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        ).to(dtype)  # fmt: skip
        one = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                           num_attention_heads=12, vocab_size=49408)).to(dtype)  # fmt: skip
        two = CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
            vocab_size=49408, projection_dim=1280,
        )).to(dtype)  # fmt: skip
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=one, text_encoder_2=two, tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(),
        unet=unet, scheduler=EulerDiscreteScheduler(), force_zeros_for_empty_prompt=True,
    )  # fmt: skip


# Measuring.


class BusySampler:
    """The GPU's utilisation, sampled every 0.2 s while a block runs (needs NVML; else None)."""

    def __init__(self):
        self.samples: list[int] = []
        self.stop = threading.Event()

    def __enter__(self):
        import torch

        try:
            torch.cuda.utilization()
        except Exception:  # no NVML on this machine: say so in the figures rather than guess
            self.samples = None
            return self
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        import torch

        while not self.stop.wait(0.2):
            self.samples.append(torch.cuda.utilization())

    def __exit__(self, *exc):
        self.stop.set()
        if self.samples is not None:
            self.thread.join()

    @property
    def busy_share(self) -> float | None:
        return round(sum(self.samples) / len(self.samples) / 100, 3) if self.samples else None


def bare_loop(pipeline, batch: int, size: int, steps: int, guidance: float, batches: int) -> dict:
    """Images per second of `pipeline(prompt=[...] * batch)`, after one warm-up batch."""

    def run():
        pipeline(prompt=[PROMPT] * batch, negative_prompt=["blurry"] * batch, height=size, width=size,
                 num_inference_steps=steps, guidance_scale=guidance, output_type="pil")  # fmt: skip

    run()
    _sync()
    with BusySampler() as busy:
        started = time.perf_counter()
        for _ in range(batches):
            run()
        _sync()
        seconds = time.perf_counter() - started
    return {"batch": batch, "images": batch * batches, "seconds": round(seconds, 2),
            "images_per_s": round(batch * batches / seconds, 3), "gpu_busy_share": busy.busy_share}  # fmt: skip


def shard_run(home: Path, models, generation, requests: int, users_per_request: int) -> dict:
    """Images per second of pmg's generate shard on a synthetic shard of `requests` generations, models
    already loaded in the worker (a first small shard loads them, untimed)."""
    import pandas as pd

    from pmg_tasks import layout
    from pmg_tasks.generate.shard import generate_shard
    from pmg_tasks.settings import Settings
    from pmg_tasks.store import open_store, write_table

    settings = Settings(home=home, models=models, generation=generation)
    store = open_store(settings)

    def write_shard(index: int, count: int) -> int:
        signatures = [f"bench-{index}-{i:05d}" for i in range(count)]
        write_table(store, layout.shard_key(DS, index), pd.DataFrame({
            "signature": signatures, "campaign_id": "bench", "prompt": [f"{PROMPT}, variation {i}" for i in range(count)],
            "negative_prompt": "blurry, low quality", "target_text": "red summer dress", "target_image_key": "",
            "alpha": 0.5, "consistency_weight": 0.0, "candidates": generation.candidates_per_request, "variants": 1,
        }))  # fmt: skip
        audience = [(s, f"u{u}", f"taste {u % 17}, colour {u % 5}") for s in signatures for u in range(users_per_request)]
        write_table(store, layout.shard_audience_key(DS, index),
                    pd.DataFrame(audience, columns=["signature", "user_id", "preference_text"]))
        return count * generation.candidates_per_request

    headlines = pd.DataFrame({"signature": [f"bench-{i}-{j:05d}" for i in (0, 1) for j in range(max(requests, 2))]})
    write_table(store, layout.run_key(DS, "headlines.parquet"), headlines.assign(headline="Made for you", source="template"))
    write_shard(0, 2)
    generate_shard(settings, DS, 0)  # loads the worker's models
    images = write_shard(1, requests)
    with BusySampler() if _cuda() else _Nothing() as busy:
        started = time.perf_counter()
        summary = generate_shard(settings, DS, 1)
        _sync()
        seconds = time.perf_counter() - started
    return {"requests": requests, "images": images, "users_per_request": users_per_request,
            "batch": generation.batch_size, "seconds": round(seconds, 2), "images_per_s": round(images / seconds, 3),
            "creatives": summary["creatives"], "safety": summary["safety"],
            "gpu_busy_share": getattr(busy, "busy_share", None)}  # fmt: skip


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def cpu_figures(workdir: Path) -> dict:
    """The test-size shard loop against the bare loop on this machine's CPU."""
    import torch

    from pmg_tasks.models import build_test_size_models
    from pmg_tasks.models.diffusion import load_diffusion_pipeline
    from pmg_tasks.settings import Generation

    torch.set_num_threads(1)
    models = build_test_size_models(workdir / "models")
    generation = Generation(image_size=64, inference_steps=4, guidance_scale=5.0, batch_size=16,
                            candidates_per_request=4, dtype="float32")  # fmt: skip
    pipeline = load_diffusion_pipeline(Path(models.diffusion), "cpu", torch.float32)
    bare = bare_loop(pipeline, 16, 64, 4, 5.0, batches=8)
    shard = shard_run(workdir / "cpu", models, generation, requests=32, users_per_request=4)
    return {"settings": generation.model_dump(), "bare_loop": bare, "shard": shard,
            "shard_over_bare": round(shard["images_per_s"] / bare["images_per_s"], 3)}  # fmt: skip


def gpu_figures(workdir: Path, requests: int, sdxl: bool) -> dict:
    import diffusers
    import torch

    from pmg_tasks.models.diffusion import load_diffusion_pipeline
    from pmg_tasks.settings import ModelPaths, Settings

    started = time.perf_counter()
    dtype = torch.bfloat16
    diffusion = build_sd15_shaped(workdir / "sd15", dtype)
    clip = build_clip_l_shaped(workdir / "clip")
    built_s = time.perf_counter() - started
    production = Settings(home=workdir / "probe", profile="production").generation.model_copy(
        update={"inference_steps": 25, "image_size": 512, "guidance_scale": 7.5}
    )
    pipeline = load_diffusion_pipeline(diffusion, "cuda", dtype)
    bare = [bare_loop(pipeline, batch, 512, 25, 7.5, batches=2) for batch in (8, 16, 32)]
    best = max(bare, key=lambda run: run["images_per_s"])
    del pipeline
    torch.cuda.empty_cache()
    models = ModelPaths(diffusion=str(diffusion), clip=str(clip))
    shard = shard_run(workdir / "gpu", models, production.model_copy(update={"batch_size": best["batch"]}),
                      requests=requests, users_per_request=8)  # fmt: skip
    result = {
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "diffusers": diffusers.__version__,
        "dtype": "bfloat16", "built_s": round(built_s, 1), "sd15_512_25_steps": {
            "bare_loop": bare, "best_bare": best, "shard": shard,
            "shard_over_bare": round(shard["images_per_s"] / best["images_per_s"], 3),
        },
    }  # fmt: skip
    if sdxl:
        from pmg_tasks.generate.shard import release_worker_models

        release_worker_models()
        try:
            xl = build_sdxl_shaped(dtype)
            xl.set_progress_bar_config(disable=True)
            result["sdxl_1024_30_steps"] = bare_loop(xl, 4, 1024, 30, 7.5, batches=2)
        except Exception as error:  # the SD-1.5 figures above stand on their own
            result["sdxl_1024_30_steps"] = {"error": repr(error)}
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=96, help="generation requests in the timed GPU shard")
    parser.add_argument("--no-sdxl", action="store_true")
    args = parser.parse_args(argv)

    import diffusers
    import torch

    result = {
        "command": "python -m benchmarks.generation_gpu",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "diffusers": diffusers.__version__, "load_average": [round(x, 2) for x in os.getloadavg()]},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="pmg-gen-bench-") as tmp:
        result["cpu_test_size"] = cpu_figures(Path(tmp))
        print(f"CPU, test-size models: shard {result['cpu_test_size']['shard']['images_per_s']} images/s, bare loop "
              f"{result['cpu_test_size']['bare_loop']['images_per_s']} images/s "
              f"({result['cpu_test_size']['shard_over_bare']}x)", flush=True)  # fmt: skip
        if torch.cuda.is_available():
            result["gpu_figures"] = gpu_figures(Path(tmp), args.requests, sdxl=not args.no_sdxl)
            print(json.dumps(result["gpu_figures"], indent=2), flush=True)
        else:
            result["gpu_figures"] = None
            result["gpu_not_measured"] = "no CUDA device on this machine: GPU throughput not measured"
            print(result["gpu_not_measured"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return result


if __name__ == "__main__":
    main()
