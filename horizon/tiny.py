"""Tiny random-weight checkpoints of the real architectures, saved to disk.

These are real transformers classes (LLaVA, Qwen2-VL, Qwen2.5-VL) with a real
image processor and a byte-level BPE tokenizer trained here with `tokenizers`,
saved with ``save_pretrained`` so that loading goes through exactly the code
path a hub checkpoint takes. Used by the tests, the benchmark and the default
demo; the weights are random, so the *numbers* they produce mean nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

CORPUS = [
    "what is the color of the shape? red green blue yellow purple orange",
    "is there a circle in the image? yes no. how many objects are there? one two three four",
    "read the code in the image. abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789",
    "USER: ASSISTANT: user assistant system",
]

QWEN_SPECIAL = [
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|endoftext|>",
]

LLAVA_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}</s>{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


MISTRAL_SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"]

MISTRAL_TEMPLATE = (
    "<s>{% for m in messages %}{% if m['role'] == 'user' %}[INST]"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}[IMG]{% endif %}{% endfor %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}[/INST]"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}</s>"
    "{% endif %}{% endfor %}"
)


@dataclass
class TinySpec:
    """Shape of a tiny checkpoint. ``grid`` is the visual-token grid (rows, cols); for the tiling families
    (internvl, idefics3, smolvlm) the square grid of one tile."""

    arch: str = "llava"  # llava | qwen2_5_vl | qwen2_vl | mistral3 | internvl | idefics3 | smolvlm
    layers: int = 3
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    grid: tuple[int, int] = (4, 4)
    vocab: int = 300
    seed: int = 0
    corpus: tuple[str, ...] = tuple(CORPUS)
    vision_layers: int = 2
    vision_hidden: int = 32
    patch: int = 0  # 0: 8 for LLaVA and Mistral 3, 14 for Qwen-VL, 4 for InternVL, Idefics3 and SmolVLM
    tokenizer: str = "bpe"  # bpe: byte-level BPE (as Qwen's); spm: SentencePiece-style BPE (as Llama's), LLaVA only
    resize: int = 0  # LLaVA: the processor's shortest edge (0: the crop side; larger crops square images too)


def train_tokenizer(corpus: list[str] | tuple[str, ...], special: list[str], vocab_size: int, bos: str | None):
    """A byte-level BPE tokenizer trained on ``corpus`` (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer)
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    return tok


def train_spm_tokenizer(corpus: list[str] | tuple[str, ...], special: list[str], vocab_size: int, bos: str | None):
    """A SentencePiece-style BPE tokenizer as Llama's is converted for transformers (deterministic).

    Same normalizer and decoder as Llama's ``tokenizer.json`` (spaces become
    ``'▁'``, one ``'▁'`` is prepended; decoding strips the first space). Llama's
    vocabulary never joins the word boundary to a digit, so `` 2`` is
    ``['▁', '2']``; splitting digits before training reproduces that.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\u2581", "merged_with_next"), pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    alphabet = sorted({c for line in corpus for c in line.replace(" ", "\u2581")} | {"\u2581", "\n"})
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(list(corpus), trainer)
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    return tok


def _text_config(spec: TinySpec, vocab: int) -> dict:
    return dict(
        hidden_size=spec.hidden,
        intermediate_size=2 * spec.hidden,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        vocab_size=vocab,
        max_position_embeddings=4096,
    )


def build_llava(spec: TinySpec, out: Path) -> Path:
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    if spec.grid[0] != spec.grid[1]:
        raise ValueError("LLaVA grids are square")
    patch = spec.patch or 8
    side = spec.grid[0] * patch
    special = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    if spec.tokenizer not in ("bpe", "spm"):
        raise ValueError(f"unknown tiny tokenizer {spec.tokenizer!r} (bpe or spm)")
    train = train_spm_tokenizer if spec.tokenizer == "spm" else train_tokenizer
    tok = PreTrainedTokenizerFast(
        tokenizer_object=train(spec.corpus, special, spec.vocab, bos="<s>"),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": spec.resize or side}, crop_size={"height": side, "width": side}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden, intermediate_size=2 * spec.vision_hidden,
        num_hidden_layers=spec.vision_layers, num_attention_heads=max(2, spec.vision_hidden // 32),
        image_size=side, patch_size=patch,
    )
    text = LlamaConfig(**_text_config(spec, len(tok)), bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    torch.manual_seed(spec.seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_qwen(spec: TinySpec, out: Path) -> Path:
    import transformers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    special = ["<unk>", *QWEN_SPECIAL]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(spec.corpus, special, spec.vocab, bos=None),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
        chat_template=QWEN_TEMPLATE,
    )
    patch, merge = spec.patch or 14, 2
    h, w = spec.grid[0] * patch * merge, spec.grid[1] * patch * merge
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=h * w, max_pixels=h * w, patch_size=patch, merge_size=merge, temporal_patch_size=2,
    )
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    head_dim = spec.hidden // spec.heads
    third = head_dim // 2 // 3
    mrope = [head_dim // 2 - 2 * third, third, third]
    text = _text_config(spec, len(tok)) | {
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
        "bos_token_id": None,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    vh = spec.vision_hidden
    vision = dict(depth=spec.vision_layers, hidden_size=vh, num_heads=max(2, vh // 32), patch_size=patch,
                  spatial_merge_size=merge, temporal_patch_size=2)
    if spec.arch == "qwen2_5_vl":
        cfg_cls, model_cls = transformers.Qwen2_5_VLConfig, transformers.Qwen2_5_VLForConditionalGeneration
        vision |= dict(intermediate_size=2 * vh, out_hidden_size=spec.hidden, window_size=4 * patch * merge,
                       fullatt_block_indexes=[spec.vision_layers - 1])
    else:
        cfg_cls, model_cls = transformers.Qwen2VLConfig, transformers.Qwen2VLForConditionalGeneration
        vision |= dict(embed_dim=vh, mlp_ratio=2, hidden_size=spec.hidden)
    config = cfg_cls(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    # The transformers Qwen-VL processor cannot be built without torchvision, so its parts are saved;
    # horizon's adapter reassembles them (or AutoProcessor does, where torchvision is installed).
    return _save(model_cls, config, spec, out, tok, image_processor, QWEN_TEMPLATE)


def _save(model_cls, config, spec: TinySpec, out: Path, tok, image_processor, template: str) -> Path:
    """Instantiate the random-weight model (seeded), save it and the processor's parts: tokenizer, image
    processor, chat template (for families whose transformers processor needs torchvision to be built)."""
    torch.manual_seed(spec.seed)
    model = model_cls(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    image_processor.save_pretrained(out)
    (out / "chat_template.jinja").write_text(template)
    return out


def build_mistral3(spec: TinySpec, out: Path) -> Path:
    """Mistral 3: a Pixtral tower (2D RoPE), 2x2 patch merging, a Mistral decoder; [IMG_BREAK] after each row."""
    from transformers import (
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        MistralConfig,
        PixtralVisionConfig,
        PreTrainedTokenizerFast,
    )
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    tok = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(spec.corpus, MISTRAL_SPECIAL, spec.vocab, bos=None),
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
    )
    patch, merge = spec.patch or 8, 2
    longest = max(spec.grid) * patch * merge
    image_processor = PixtralImageProcessorPil(size={"longest_edge": longest}, patch_size={"height": patch, "width": patch})
    vh = spec.vision_hidden
    vision = PixtralVisionConfig(hidden_size=vh, intermediate_size=2 * vh, num_hidden_layers=spec.vision_layers,
                                 num_attention_heads=max(2, vh // 16), image_size=longest, patch_size=patch,
                                 head_dim=vh // max(2, vh // 16))
    text = MistralConfig(**_text_config(spec, len(tok)), bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, sliding_window=None)
    config = Mistral3Config(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("[IMG]"),
                            spatial_merge_size=merge, vision_feature_layer=-1)
    # transformers' PixtralProcessor needs torchvision to be built, so its parts are saved with the
    # processor_config.json it would write; horizon's adapter (or AutoProcessor, with torchvision) reassembles them
    _save(Mistral3ForConditionalGeneration, config, spec, out, tok, image_processor, MISTRAL_TEMPLATE)
    (out / "processor_config.json").write_text(json.dumps({
        "processor_class": "PixtralProcessor", "patch_size": patch, "spatial_merge_size": merge,
        "image_token": "[IMG]", "image_break_token": "[IMG_BREAK]", "image_end_token": "[IMG_END]"}, indent=2) + "\n")
    return out


def build_tiny(out: str | Path, spec: TinySpec | None = None, **overrides) -> Path:
    """Build and save a tiny checkpoint; returns its directory."""
    spec = spec or TinySpec()
    if overrides:
        spec = TinySpec(**{**spec.__dict__, **overrides})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if spec.arch == "llava":
        return build_llava(spec, out)
    if spec.arch in ("qwen2_5_vl", "qwen2_vl"):
        return build_qwen(spec, out)
    if spec.arch == "mistral3":
        return build_mistral3(spec, out)
    if spec.arch == "gemma3":
        from .testing.tiny_gemma3 import build_gemma3

        return build_gemma3(spec, out)
    if spec.arch == "internvl":
        from .testing.tiny_internvl import build_internvl

        return build_internvl(spec, out)
    if spec.arch in ("idefics3", "smolvlm"):
        from .testing.tiny_idefics3 import build_idefics3

        return build_idefics3(spec, out)
    from .testing.families import BUILDERS

    if spec.arch in BUILDERS:
        return BUILDERS[spec.arch](out, layers=spec.layers, hidden=spec.hidden, seed=spec.seed)
    raise ValueError(f"unknown tiny architecture {spec.arch!r}")


def write_tiny_dataset(out: str | Path, n: int = 4, seed: int = 0, size: tuple[int, int] = (64, 64)) -> Path:
    """A few random-noise images with shape-colour questions, as horizon JSONL (the README's Dataset file section)."""
    import json

    import numpy as np
    from PIL import Image

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = ["red", "green", "blue", "yellow"]
    lines = []
    for i in range(n):
        pixels = (rng.random((size[0], size[1], 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(out / "images" / f"{i}.png")
        lines.append({"id": f"s{i}", "image": f"images/{i}.png", "question": "what is the color of the shape?",
                      "answer": colours[i % len(colours)], "task": "colour" if i % 2 == 0 else "count"})
    path = out / "data.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path
