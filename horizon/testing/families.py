"""Tiny random-weight checkpoints of LLaVA-NeXT, LLaVA-OneVision and Qwen3-VL (the other families' builders
are in :mod:`horizon.tiny` and the ``tiny_*`` modules next to this one).

Like :mod:`horizon.tiny` (whose ``build_tiny`` dispatches here), each builder instantiates the REAL transformers
config, ``...ForConditionalGeneration`` and (PIL) image-processor classes with
tiny shapes (2-3 decoder layers, hidden 64, a 2-layer vision tower, images of
a few dozen pixels), trains a small BPE tokenizer on the spot with the special
tokens and chat template the family's processor expects, and saves everything
with ``save_pretrained`` (safetensors), so loading goes through the code path
a hub checkpoint takes. Weights are random and seeded: the numbers mean
nothing, the geometry (image-token spans, tiles, grids, masks) is real.

Families, keyed by transformers ``model_type``: see :data:`BUILDERS`.

Processors whose class also holds a video processor (LLaVA-OneVision,
Qwen3-VL) cannot be instantiated without torchvision; for those the parts are saved
(tokenizer with its extra special tokens, PIL image processor, chat template,
plus ``processor_config.json`` with the processor's own arguments) so that
``AutoProcessor`` rebuilds them where those packages exist and the family's
adapter reassembles them here (image-only).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from horizon.tiny import CORPUS, train_tokenizer

EXTRA_CORPUS = [
    "<|im_start|>user <|im_end|> <|im_start|>assistant",
    "User: Assistant: [INST] [/INST] <start_of_turn>user <end_of_turn> <start_of_turn>model",
]

# ---------------------------------------------------------------- chat templates


def _content_template(image: str, text_item: str = "{{ c['text'] }}") -> str:
    return (
        "{% for c in m['content'] %}{% if c['type'] == 'image' %}" + image
        + "{% elif c['type'] == 'text' %}" + text_item + "{% endif %}{% endfor %}"
    )


LLAVA_NEXT_TEMPLATE = (  # llava-v1.6-vicuna style
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: " + _content_template("<image>\n") + " "
    "{% else %}ASSISTANT: " + _content_template("") + "</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

CHATML_IMAGE_TEMPLATE = (  # llava-onevision-qwen2 style
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n" + _content_template("<image>\n") + "<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

QWEN3_VL_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    + _content_template("<|vision_start|><|image_pad|><|vision_end|>") + "<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# ---------------------------------------------------------------- shared helpers


def _tokenizer(special: list[str], template: str, vocab: int = 400, bos: str | None = None, add_bos: bool = True,
               **tokens):
    """A ``PreTrainedTokenizerFast`` over a BPE trained here; ``tokens`` are its named special tokens.

    Keys other than bos/eos/unk/pad/sep/cls/mask go to ``extra_special_tokens`` (so that e.g.
    ``tok.image_token`` and ``tok.image_token_id`` exist, as on the hub tokenizers).
    """
    from transformers import PreTrainedTokenizerFast

    core = {k: v for k, v in tokens.items() if k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    extra = {k: v for k, v in tokens.items() if k not in core}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(list(CORPUS) + EXTRA_CORPUS, special, vocab,
                                         bos=bos if add_bos else None),
        extra_special_tokens=extra,
        chat_template=template,
        **core,
    )
    return tok


def _text(hidden: int = 64, layers: int = 3, heads: int = 4, kv: int = 2, **kw) -> dict:
    return dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096, **kw)


def _ids(tok, **kw) -> dict:
    return {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id} | kw


def _save(model_cls, config, tok, out: Path, seed: int, processor=None, parts=(), processor_config=None) -> Path:
    """Instantiate ``model_cls(config)`` seeded, save it with the processor (or its parts)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = model_cls(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    if processor is not None:
        processor.save_pretrained(out)
    else:
        tok.save_pretrained(out)
        for part in parts:
            part.save_pretrained(out)
        if tok.chat_template:
            (out / "chat_template.jinja").write_text(tok.chat_template)
        if processor_config is not None:  # the layout ProcessorMixin.save_pretrained writes
            nested = {"image_processor": json.loads(parts[0].to_json_string())} if parts else {}
            (out / "processor_config.json").write_text(json.dumps(nested | processor_config, indent=2) + "\n")
    return out


# ---------------------------------------------------------------- builders


def build_llava_next(out: Path, *, layers: int = 3, hidden: int = 64, patch: int = 8, side: int = 32,
                     seed: int = 0) -> Path:
    """LLaVA-NeXT (1.6): CLIP tower (+CLS), anyres tiles, ``image_newline`` after every unpadded row."""
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextProcessor)
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tok = _tokenizer(["<unk>", "<s>", "</s>", "<pad>", "<image>"], LLAVA_NEXT_TEMPLATE, bos="<s>",
                     bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>", image_token="<image>")
    pinpoints = [[side, 2 * side], [2 * side, side], [2 * side, 2 * side]]
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                    image_grid_pinpoints=pinpoints)
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=patch,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1,
                              chat_template=LLAVA_NEXT_TEMPLATE)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=side, patch_size=patch)
    text = LlamaConfig(**_text(hidden, layers), vocab_size=len(tok), **_ids(tok))
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=tok.image_token_id,
                             image_grid_pinpoints=pinpoints, vision_feature_layer=-2,
                             vision_feature_select_strategy="default", image_seq_length=(side // patch) ** 2)
    return _save(LlavaNextForConditionalGeneration, config, tok, out, seed, processor=proc)


def build_llava_onevision(out: Path, *, layers: int = 3, hidden: int = 64, patch: int = 8, side: int = 32,
                          seed: int = 0) -> Path:
    """LLaVA-OneVision: SigLIP tower (no CLS, ``full`` features), anyres_max_9 tiles, Qwen2 decoder."""
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config,
                              SiglipVisionConfig)
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil)

    tok = _tokenizer(["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"],
                     CHATML_IMAGE_TEMPLATE, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<unk>",
                     image_token="<image>", video_token="<video>")
    pinpoints = [[side, side], [side, 2 * side], [2 * side, side], [2 * side, 2 * side]]
    ip = LlavaOnevisionImageProcessorPil(size={"height": side, "width": side}, image_grid_pinpoints=pinpoints)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=side, patch_size=patch)
    text = Qwen2Config(**_text(hidden, layers), vocab_size=len(tok), **_ids(tok))
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=tok.image_token_id,
                                  video_token_index=tok.video_token_id, image_grid_pinpoints=pinpoints,
                                  vision_feature_layer=-1, vision_feature_select_strategy="full",
                                  vision_aspect_ratio="anyres_max_9")
    pcfg = {"processor_class": "LlavaOnevisionProcessor", "num_image_tokens": (side // patch) ** 2,
            "vision_feature_select_strategy": "full", "vision_aspect_ratio": "anyres_max_9",
            "image_token": "<image>", "video_token": "<video>"}
    return _save(LlavaOnevisionForConditionalGeneration, config, tok, out, seed, parts=[ip], processor_config=pcfg)


def build_qwen3_vl(out: Path, *, layers: int = 3, hidden: int = 64, patch: int = 16, seed: int = 0,
                   deepstack: tuple[int, ...] = (0, 1, 2)) -> Path:
    """Qwen3-VL: interleaved M-RoPE, DeepStack (vision layers ``deepstack`` feed decoder layers 0..k-1: by
    default every decoder layer of the 3-layer checkpoint, so first, middle and last layers all get features)."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    names = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
             "<|image_pad|>", "<|video_pad|>"]
    tok = _tokenizer(names, QWEN3_VL_TEMPLATE, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<unk>",
                     image_token="<|image_pad|>", video_token="<|video_pad|>", vision_start_token="<|vision_start|>",
                     vision_end_token="<|vision_end|>")
    merge = 2
    ip = Qwen2VLImageProcessorPil(min_pixels=(patch * merge) ** 2 * 4, max_pixels=(patch * merge) ** 2 * 16,
                                  patch_size=patch, merge_size=merge, temporal_patch_size=2)
    heads = 4
    head_dim = hidden // heads  # 16 -> 8 rotary frequencies: T/H/W sections 4/2/2, interleaved
    text = _text(hidden, layers, heads) | dict(
        head_dim=head_dim, vocab_size=len(tok), bos_token_id=None, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2],
                         "mrope_interleaved": True})
    vision = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=patch,
                  spatial_merge_size=merge, temporal_patch_size=2, out_hidden_size=hidden,
                  num_position_embeddings=64, deepstack_visual_indexes=list(deepstack))
    ids = {t: tok.convert_tokens_to_ids(t) for t in names}
    config = Qwen3VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"])
    pcfg = {"processor_class": "Qwen3VLProcessor"}
    return _save(Qwen3VLForConditionalGeneration, config, tok, out, seed, parts=[ip], processor_config=pcfg)


BUILDERS = {
    "llava_next": build_llava_next,
    "llava_onevision": build_llava_onevision,
    "qwen3_vl": build_qwen3_vl,
}
