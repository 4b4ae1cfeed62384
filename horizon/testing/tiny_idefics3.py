"""Tiny random-weight Idefics3 and SmolVLM checkpoints: SigLIP-like tower, pixel shuffle 2, tiles + a global image.

Real transformers classes (``Idefics3Config`` / ``SmolVLMConfig``, their
``...ForConditionalGeneration`` and PIL image processors), a Llama decoder and
a tokenizer trained on the spot with the ``<row_r_col_c>`` markers, saved with
``save_pretrained``. ``Idefics3Processor`` is saved whole; ``SmolVLMProcessor``
needs torchvision (video) and num2words, so its parts are saved and horizon's
image-only processor reassembles them here (``AutoProcessor`` does where those
packages exist).

``spec.grid`` is the token grid of ONE tile (square: pixel shuffle by 2 of a
square patch grid); tiles are ``2 * grid * patch`` pixels, the processor first
scales an image's longest edge to two tiles, so an image has at most 2 x 2 tiles.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..tiny import TinySpec, _save, _text_config, train_tokenizer

IDEFICS3_SPECIAL = (["<unk>", "<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>",
                     "<image>", "<global-img>"]
                    + [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)])

# SmolVLM's default chat template (Idefics3's differs only in its begin-of-text token)
IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

SCALE = 2  # pixel shuffle scale_factor


def tile_side(spec: TinySpec) -> int:
    return SCALE * spec.grid[0] * (spec.patch or 4)


def build_idefics3(spec: TinySpec, out: Path) -> Path:
    """Idefics3 (``spec.arch == "idefics3"``) or SmolVLM (``"smolvlm"``): the same geometry, each family's classes."""
    import transformers
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    smol = spec.arch == "smolvlm"
    if spec.grid[0] != spec.grid[1]:
        raise ValueError("Idefics3 / SmolVLM tiles are square token grids")
    if smol:
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil as ImageProcessor
    else:
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil as ImageProcessor
    special = IDEFICS3_SPECIAL + (["<video>"] if smol else [])
    extra = {"fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
             "end_of_utterance_token": "<end_of_utterance>", "global_image_token": "<global-img>"}
    if smol:
        extra["video_token"] = "<video>"
    tok = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(spec.corpus, special, max(spec.vocab, 400), bos=None),
        eos_token="<end_of_utterance>", pad_token="<|endoftext|>", unk_token="<unk>",
        extra_special_tokens=extra, chat_template=IDEFICS3_TEMPLATE,
    )
    patch, side = spec.patch or 4, tile_side(spec)
    image_processor = ImageProcessor(size={"longest_edge": 2 * side}, max_image_size={"longest_edge": side},
                                     do_image_splitting=True)
    seq = spec.grid[0] * spec.grid[1]
    vh = spec.vision_hidden
    vision = dict(hidden_size=vh, intermediate_size=2 * vh, num_hidden_layers=spec.vision_layers,
                  num_attention_heads=max(2, vh // 16), image_size=side, patch_size=patch)
    text = LlamaConfig(**_text_config(spec, len(tok)), bos_token_id=None, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)
    prefix = "SmolVLM" if smol else "Idefics3"
    config = getattr(transformers, f"{prefix}Config")(vision_config=vision, text_config=text,
                                                      image_token_id=tok.convert_tokens_to_ids("<image>"),
                                                      scale_factor=SCALE)
    model_cls = getattr(transformers, f"{prefix}ForConditionalGeneration")
    _save(model_cls, config, spec, out, tok, image_processor, IDEFICS3_TEMPLATE)
    if smol:  # SmolVLMProcessor needs num2words and a (torchvision) video processor: its arguments are saved
        (out / "processor_config.json").write_text(json.dumps(
            {"processor_class": "SmolVLMProcessor", "image_seq_len": seq}, indent=2) + "\n")
    else:
        transformers.Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=seq,
                                       chat_template=IDEFICS3_TEMPLATE).save_pretrained(out)
    return out
