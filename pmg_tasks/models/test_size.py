"""Test-size models: tiny, randomly initialised, built locally from configs, for every model role.

They make the whole flow run on a CPU in seconds while the stages load them exactly as they load real
weights, with `from_pretrained(path)`. Nothing is downloaded: the tokenizers are trained here on a small
corpus, the models are built from configs (the way diffusers' fast tests build `get_dummy_components()`),
and every random draw is seeded, so the same call writes the same files.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from pmg_tasks.settings import ModelPaths

# Words the flow feeds the models: history templates, keywords, prompts. The tokenizers learn their merges
# from it, so these words become single tokens and test prompts read like text, not bytes.
CORPUS = """
a photo of a red summer dress on a white background, studio lighting, high quality product shot.
minimalist white sneakers, clean design, soft pastel colors, bold typography, vintage leather bag.
cozy wool sweater in warm autumn tones, rustic wooden table, natural light, shallow depth of field.
sleek black smartphone, modern tech gadget, neon city at night, futuristic style, glossy finish.
fresh organic coffee beans, ceramic mug, morning breakfast, bright kitchen, healthy lifestyle.
outdoor hiking boots, mountain trail, adventure travel, green forest, blue sky, sunny weather.
elegant gold watch, luxury fashion, silk scarf, floral pattern, romantic pink roses, gift box.
kids toys, colorful cartoon style, playful animals, cute bear, comic illustration, watercolor painting.
the user clicked, viewed, liked and bought these items: movies, books, music, games, clothes, shoes.
given the user's history, list keywords that describe the user's preferences for genre, style, color,
brand, material and price. keywords: comedy, drama, action, romance, science fiction, fantasy, anime.
target item keywords: title, category, brand, description. generate an image of the item for the user.
"""

SEED = 0
CLIP_PROJECTION_DIM = 24


def build_test_size_models(out_dir: Path, seed: int = SEED) -> ModelPaths:
    """Write a tiny diffusion pipeline, CLIP and causal LM under `out_dir` (diffusion/, clip/, llm/) and
    return their paths. Each loads back with its library's `from_pretrained`; the same seed writes the same
    weights."""
    out_dir = Path(out_dir).expanduser().resolve()
    return ModelPaths(
        diffusion=str(build_diffusion_pipeline(out_dir / "diffusion", seed)),
        clip=str(build_clip(out_dir / "clip", seed)),
        llm=str(build_causal_lm(out_dir / "llm", seed)),
    )


def build_diffusion_pipeline(out: Path, seed: int = SEED) -> Path:
    """A Stable Diffusion pipeline (UNet, VAE, CLIP text encoder, tokenizer, DDIM) that draws 64x64 images
    in a fraction of a second on a CPU."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = clip_tokenizer()
    with _seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
        )
        vae = AutoencoderKL(
            sample_size=64,
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        )
        text_encoder = CLIPTextModel(_clip_text_config(tokenizer))
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(out)
    return out


def build_clip(out: Path, seed: int = SEED) -> Path:
    """A CLIP model (text and vision towers of width 32 projected to 24 dimensions, 32x32 images) and its
    processor. The projection differs from the towers' width so code that scores with hidden states instead
    of projected embeddings fails loudly."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPVisionConfig
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = clip_tokenizer()
    vision = CLIPVisionConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    config = CLIPConfig(
        text_config=_clip_text_config(tokenizer).to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=CLIP_PROJECTION_DIM,
    )
    with _seeded(seed):
        model = CLIPModel(config)
    # The PIL image processor: the default one needs torchvision, which CPU environments leave out.
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    model.save_pretrained(out)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


def build_causal_lm(out: Path, seed: int = SEED) -> Path:
    """A two-layer Llama with a byte-level BPE tokenizer that pads on the left, ready for batched `generate`."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = causal_lm_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with _seeded(seed):
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def clip_tokenizer():
    """A CLIP tokenizer (lower-cased, byte-level, words end in `</w>`) with merges learned from CORPUS.

    Its vocabulary is laid out like OpenAI's: the 256 byte symbols, the same with `</w>`, one token per merge,
    then the start and end markers.
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    # CLIPTokenizer's own normalizer and pre-tokenizer split the corpus, so the merges fit what it will see.
    splitter = CLIPTokenizer().backend_tokenizer
    pieces = splitter.pre_tokenizer.pre_tokenize_str(splitter.normalizer.normalize_str(CORPUS))
    merges = learn_bpe_merges([(*piece[:-1], piece[-1] + "</w>") for piece, _ in pieces])

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [symbol + "</w>" for symbol in alphabet] + ["".join(pair) for pair in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab=_numbered(tokens), merges=merges, model_max_length=77)


def causal_lm_tokenizer():
    """A byte-level BPE tokenizer with merges learned from CORPUS and begin, end and pad tokens, padding on
    the left (a decoder continues from the prompt's last token, so padding must come before it)."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    bos, eos, pad = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
    splitter = pre_tokenizers.ByteLevel(add_prefix_space=False)
    merges = learn_bpe_merges([tuple(piece) for piece, _ in splitter.pre_tokenize_str(CORPUS)])
    tokens = [bos, eos, pad] + sorted(pre_tokenizers.ByteLevel.alphabet()) + ["".join(p) for p in merges]

    tokenizer = Tokenizer(BPE(vocab=_numbered(tokens), merges=merges))
    tokenizer.pre_tokenizer = splitter
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, 0)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        padding_side="left",
        model_max_length=512,
    )


def learn_bpe_merges(words: list[tuple[str, ...]], min_count: int = 1) -> list[tuple[str, str]]:
    """Byte-pair merges learned from `words` (each a tuple of symbols): repeatedly join the most frequent
    adjacent pair until none occurs `min_count` times (by default, until every word is one token). Ties go to the alphabetically first pair, so the
    result never depends on hash order (the `tokenizers` trainer breaks ties differently run to run)."""
    counts = Counter(words)
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in counts.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        if pairs[best] < min_count:
            return merges
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for word, count in counts.items():
            merged[_join_pair(word, best)] += count
        counts = merged


def _join_pair(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    symbols: list[str] = []
    i = 0
    while i < len(word):
        if word[i : i + 2] == pair:
            symbols.append(pair[0] + pair[1])
            i += 2
        else:
            symbols.append(word[i])
            i += 1
    return tuple(symbols)


def _numbered(tokens: list[str]) -> dict[str, int]:
    # A merge can spell a token that is already there (a byte symbol); the first id wins.
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab


def _clip_text_config(tokenizer):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=32,
    )


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch for the block without disturbing the caller's random state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
