"""Tiny random-weight InternVL (3-hf) checkpoint: InternViT tower, pixel shuffle 0.5, tiles + thumbnail, Qwen2 decoder.

Real transformers classes (``InternVLConfig``, ``InternVLForConditionalGeneration``,
``GotOcr2ImageProcessorPil``), a tokenizer trained on the spot, saved with
``save_pretrained``. ``InternVLProcessor`` holds a video processor and cannot
be built without torchvision, so its parts are saved (tokenizer, image
processor, chat template, ``processor_config.json``); ``AutoProcessor``
rebuilds it where torchvision exists and horizon's image-only processor does
the same expansion here.

``spec.grid`` is the token grid of ONE tile (square: pixel shuffle halves a
square patch grid); tiles are ``2 * grid * patch`` pixels wide, an image is cut
into at most four of them.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..tiny import TinySpec, _save, _text_config, train_tokenizer

INTERNVL_SPECIAL = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>",
                    "<video>"]

# InternVL3-hf style: the processor expands <IMG_CONTEXT> into <img> + <IMG_CONTEXT> x (tokens per tile x tiles) + </img>
INTERNVL_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

MAX_TILES = 4


def tile_side(spec: TinySpec) -> int:
    """Pixels per tile side: two vision patches per token side (pixel shuffle 0.5)."""
    return 2 * spec.grid[0] * (spec.patch or 4)


def build_internvl(spec: TinySpec, out: Path) -> Path:
    from transformers import InternVLConfig, InternVLForConditionalGeneration, PreTrainedTokenizerFast, Qwen2Config
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    if spec.grid[0] != spec.grid[1]:
        raise ValueError("InternVL tiles are square token grids")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(spec.corpus, INTERNVL_SPECIAL, spec.vocab, bos=None),
        eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<unk>",
        extra_special_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                              "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
        chat_template=INTERNVL_TEMPLATE,
    )
    patch, side = spec.patch or 4, tile_side(spec)
    image_processor = GotOcr2ImageProcessorPil(size={"height": side, "width": side}, crop_to_patches=True,
                                               min_patches=1, max_patches=MAX_TILES)
    vh = spec.vision_hidden
    vision = dict(hidden_size=vh, intermediate_size=2 * vh, num_hidden_layers=spec.vision_layers,
                  num_attention_heads=max(2, vh // 16), image_size=[side, side], patch_size=[patch, patch])
    text = Qwen2Config(**_text_config(spec, len(tok)), bos_token_id=None, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)
    seq = spec.grid[0] * spec.grid[1]
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=tok.context_image_token_id,
                            image_seq_length=seq, downsample_ratio=0.5, vision_feature_layer=-1,
                            vision_feature_select_strategy="default")
    _save(InternVLForConditionalGeneration, config, spec, out, tok, image_processor, INTERNVL_TEMPLATE)
    (out / "processor_config.json").write_text(json.dumps(
        {"processor_class": "InternVLProcessor", "image_seq_length": seq}, indent=2) + "\n")
    return out
