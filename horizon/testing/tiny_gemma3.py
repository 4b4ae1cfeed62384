"""Tiny Gemma 3 checkpoint: a SigLIP tower avg-pooled to a square grid, a Gemma 3 decoder mixing sliding and full layers.

Real transformers classes throughout (``Gemma3Config``, ``Gemma3ForConditionalGeneration``,
``Gemma3Processor`` with ``Gemma3ImageProcessorPil``), random weights, a
tokenizer trained here. ``spec.grid`` is the pooled grid of one image
(square: ``mm_tokens_per_image = rows * cols``). The sliding window is made
small (:data:`SLIDING_WINDOW` tokens) and the three layers are sliding, full,
sliding, so that every rule of Gemma 3's attention is exercised on a short
prompt: each image's token block (longer than the window) attends to itself
bidirectionally, and sliding windows cut through it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..tiny import TinySpec, train_tokenizer

SLIDING_WINDOW = 5
PATCH = 4  # SigLIP patch; the tower sees (2 * rows) x (2 * cols) patches, pooled 2 x 2

GEMMA3_SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                  "<end_of_image>", "<image_soft_token>"]

# As Gemma 3's own template lays a turn out; <bos> comes from the tokenizer. The processor expands
# <start_of_image> into \n\n<start_of_image><image_soft_token>*N<end_of_image>\n\n.
GEMMA3_TEMPLATE = (
    "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<start_of_image>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

CORPUS_EXTRA = ["<start_of_turn>user <end_of_turn> <start_of_turn>model", "user model\n\n"]


def image_side(grid: tuple[int, int]) -> int:
    """Pixel side of the (square) processed image that pools to ``grid``."""
    return 2 * grid[0] * PATCH


def build_gemma3(spec: TinySpec, out: Path) -> Path:
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor, PreTrainedTokenizerFast,
                              SiglipVisionConfig)
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    if spec.grid[0] != spec.grid[1]:
        raise ValueError("Gemma 3 grids are square (sqrt(mm_tokens_per_image) per side)")
    tokens = spec.grid[0] * spec.grid[1]
    if tokens <= SLIDING_WINDOW:
        raise ValueError(f"the tiny Gemma 3 image block ({tokens} tokens) must be longer than its sliding window")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(list(spec.corpus) + CORPUS_EXTRA, GEMMA3_SPECIAL, spec.vocab, bos="<bos>"),
        bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                              "image_token": "<image_soft_token>"},
        chat_template=GEMMA3_TEMPLATE,
    )
    side = image_side(spec.grid)
    ip = Gemma3ImageProcessorPil(size={"height": side, "width": side})
    processor = Gemma3Processor(image_processor=ip, tokenizer=tok, chat_template=GEMMA3_TEMPLATE,
                                image_seq_length=tokens)
    vh = spec.vision_hidden
    vision = SiglipVisionConfig(hidden_size=vh, intermediate_size=2 * vh, num_hidden_layers=spec.vision_layers,
                                num_attention_heads=max(2, vh // 16), image_size=side, patch_size=PATCH,
                                vision_use_head=False)
    head_dim = spec.hidden // spec.heads
    kinds = ["sliding_attention", "full_attention"]
    text = dict(hidden_size=spec.hidden, intermediate_size=2 * spec.hidden, num_hidden_layers=spec.layers,
                num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads, head_dim=head_dim,
                query_pre_attn_scalar=head_dim, max_position_embeddings=4096, vocab_size=len(tok),
                sliding_window=SLIDING_WINDOW, layer_types=[kinds[j % 2] for j in range(spec.layers)],
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=tokens,
                          boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
                          eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
                          image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"))
    torch.manual_seed(spec.seed)
    model = Gemma3ForConditionalGeneration(config)
    # transformers initialises Gemma's RMSNorm weights to 0 (scale 1 + w) and the projector to 0: random ones
    # make the norms, q_norm / k_norm and the image features matter, as they do in trained models
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "mm_input_projection" in name:
                param.copy_(0.5 * torch.randn(param.shape))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
