"""Adapters: the only place where architectures differ.

An adapter knows where the decoder layers, the final norm and the rotary
embedding live, how a layer takes its rotary embedding and KV cache, how to
recompute a layer's keys, values and last-token attention, how to build a
prompt with the processor's chat template, which sequence positions hold
visual tokens, each image's token grid and the pixels it covers. Everything
else in horizon is architecture-agnostic. Families register their adapter
class for the transformers ``model_type`` values they serve
(:func:`register_adapter`); :func:`adapter_for` picks one from a config.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
from typing import Any, Iterator

import torch
from PIL import Image

from ..errors import HorizonError
from ..groups import ImageGrid
from ..registry import Registry

log = logging.getLogger("horizon")

ATTENTION_KINDS = ("causal", "image-blocks")

__all__ = ["ATTENTION_KINDS", "execution_device", "materialized", "Adapter", "ADAPTERS", "register_adapter", "adapter_for", "supported_model_types", "missing_methods"]


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where ``module`` computes: its dispatch hook's execution device under a device map, else its weights'."""
    device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    if device is not None:
        return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    for param in module.parameters():
        if param.device.type != "meta":  # offloaded weights wait on the meta device until their hook loads them
            return param.device
    return torch.device("cpu")


@contextlib.contextmanager
def materialized(*modules: torch.nn.Module) -> Iterator[None]:
    """Within the block, offloaded modules hold their real weights on their execution device.

    Needed where horizon reads a module's weights itself (the float32 head)
    instead of calling the module, whose dispatch hook would load them.
    """
    if not any(hasattr(m, "_hf_hook") for module in modules for m in module.modules()):
        yield
        return
    from accelerate.utils import align_module_device

    with contextlib.ExitStack() as stack:
        for module in modules:
            stack.enter_context(align_module_device(module))
        yield


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive attention mask (0 where ``allowed``, the dtype's lowest value elsewhere) that eager and sdpa
    attention both take, on ``allowed``'s device."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


def _pass_through(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return hidden_states


class Adapter:
    """Base class; subclasses describe one family of checkpoints."""

    name: str = ""
    model_types: tuple[str, ...] = ()
    # Text between the generation prompt and the answer when teacher forcing.
    answer_separator: str = ""
    # Most images one prompt may hold (None: no limit); checked before weights load.
    max_images: int | None = None
    # Logged once per scan when a sample has several images ("" for none).
    multi_image_warning: str = ""

    # The keyword a decoder layer takes its rotary (cos, sin) by.
    rotary_keyword: str = "position_embeddings"
    # How a decoder layer's attention is masked: one of ATTENTION_KINDS, the kinds the engine and pruning
    # derive removal and prefix reuse for; any other is refused. "causal": every layer plain causal.
    # "image-blocks": the family gives its rule in attends / first_changed (bidirectional image blocks,
    # sliding windows per layer type); the engine builds every layer type's mask from it.
    attention: str = "causal"
    # A horizon image-only processor (horizon.models.processors) for when transformers' needs torchvision.
    image_only_processor: Any = None
    # Non-patch tokens after every row of an image's patches (Pixtral's [IMG_BREAK]); they join no window.
    row_separators: int = 0
    # Methods a family must implement (the contract suite names the missing ones).
    required: tuple[str, ...] = ("visual_features_path", "grid_shapes")

    # -- model structure -------------------------------------------------
    def language_model_path(self) -> str:
        """Attribute path of the decoder stack."""
        return "model.language_model"

    def lm_head_path(self) -> str:
        return "lm_head"

    def decoder_layers(self, language_model: Any) -> Any:
        """The decoder layers of ``language_model`` (a module, or its nnsight envoy)."""
        return language_model.layers

    def final_norm(self, language_model: Any) -> Any:
        """The norm after the last decoder layer (a module, or its nnsight envoy)."""
        return language_model.norm

    def rotary_module(self, language_model: Any) -> Any:
        """The module that computes every position's rotary embedding (a module, or its nnsight envoy)."""
        return language_model.rotary_emb

    def rotary_embeddings(self, language_model: torch.nn.Module, hidden: torch.Tensor,
                          position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) for ``position_ids``, as the decoder layers receive them."""
        return self.rotary_module(language_model)(hidden, position_ids)

    def apply_rotary(self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                     sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate queries and keys (B, heads, n, head_dim) as the family's attention does: rotate-half RoPE."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        return apply_rotary_pos_emb(q, k, cos, sin)

    def visual_features_path(self) -> str:
        """Module whose output is the visual tokens' embeddings as the language model receives them."""
        raise NotImplementedError(f"{type(self).__name__} must implement visual_features_path")

    def image_token_id(self, model: torch.nn.Module) -> int:
        return int(model.config.image_token_id)

    def key_values(
        self, layer: torch.nn.Module, hidden: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (after RoPE) and values a decoder layer's attention computes from ``hidden``.

        Lets the engine run the last layer for the scored rows only: the other
        rows contribute keys and values and nothing else. Written for the
        Llama-style layer most families share (with Qwen3's and Gemma 3's key
        norm); shapes (B, kv_heads, n, head_dim).
        """
        attn = layer.self_attn
        device = execution_device(attn.k_proj)  # the layer's own device under a device map
        x = layer.input_layernorm(hidden.to(device))
        shape = (*x.shape[:-1], -1, attn.head_dim)
        keys = attn.k_proj(x).view(shape)
        if getattr(attn, "k_norm", None) is not None:  # Qwen3 / Gemma 3: RMSNorm over each head's keys before RoPE
            keys = attn.k_norm(keys)
        keys = keys.transpose(1, 2)
        values = attn.v_proj(x).view(shape).transpose(1, 2)
        cos, sin = (t.to(device) for t in position_embeddings)
        _, keys = self.apply_rotary(keys, keys, cos, sin)
        return keys, values

    def last_token_attention(
        self, layer: torch.nn.Module, hidden: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention weights (heads, n) of the last position over all n positions, computed explicitly.

        sdpa and flash attention never materialise the weights, so FastV's
        criterion is recomputed here from the layer's own projections, with the
        attention's q/k norms and logit softcapping where it has them, and the
        last row of the layer's ``attention_mask`` where one is given (a
        sliding window hides early positions from the last one).
        ``hidden`` is the layer's input (1, n, D).
        """
        keys, _ = self.key_values(layer, hidden, position_embeddings)  # (1, kv_heads, n, hd)
        cos, sin = position_embeddings
        query = self.queries(layer, hidden[:, -1:], (cos[:, -1:], sin[:, -1:]))  # (1, heads, 1, hd)
        mask = None if attention_mask is None else attention_mask[:, :, -1:]  # the last query's row
        return self.attention_weights(layer, query, keys, mask)[0, :, 0]

    def queries(self, layer: torch.nn.Module, hidden: torch.Tensor,
                position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Queries (after the q norm where there is one, and RoPE) a decoder layer's attention computes from
        ``hidden`` (B, n, D); shape (B, heads, n, head_dim). The counterpart of :meth:`key_values`."""
        attn = layer.self_attn
        device = execution_device(attn.q_proj)
        x = layer.input_layernorm(hidden.to(device))
        query = attn.q_proj(x).view(*x.shape[:-1], -1, attn.head_dim)
        if getattr(attn, "q_norm", None) is not None:
            query = attn.q_norm(query)
        query = query.transpose(1, 2)
        cos, sin = (t.to(device) for t in position_embeddings)
        query, _ = self.apply_rotary(query, query, cos, sin)
        return query

    def attention_weights(self, layer: torch.nn.Module, queries: torch.Tensor, keys: torch.Tensor,
                          attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 attention weights (B, heads, q, k) of ``queries`` (B, heads, q, hd) over ``keys``
        (B, kv_heads, k, hd), computed explicitly (sdpa and flash attention never materialise them): the
        layer's scaling, grouped-query heads, logit softcapping where it has it, and ``attention_mask``
        (B or 1, 1, q, k; boolean or additive) where one is given."""
        attn = layer.self_attn
        keys = keys.to(queries.device).repeat_interleave(queries.shape[1] // keys.shape[1], dim=1)
        scores = (queries.float() @ keys.float().transpose(-1, -2)) * attn.scaling
        cap = getattr(attn, "attn_logit_softcapping", None)  # Gemma-style attention logit softcapping
        if cap is not None:
            scores = torch.tanh(scores / cap) * cap
        if attention_mask is not None:
            mask = attention_mask.to(scores.device)
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
        return torch.softmax(scores, dim=-1)

    # -- per-position inputs of the decoder stack ------------------------
    def clean_extras(self, lm_kwargs: dict[str, Any]) -> dict[str, Any]:
        """What an ablated pass needs from the language model's clean-pass keyword arguments besides hidden
        states, positions and masks (Qwen3-VL: the DeepStack visual features and where they go). Default: none."""
        return {}

    def ablated_lm_kwargs(self, extras: dict[str, Any], index: torch.Tensor, valid: torch.Tensor,
                          layer: int) -> dict[str, Any]:
        """Extra keyword arguments of the language model for an ablated pass that starts at ``layer``.

        ``index`` (B, n) holds the original position of each recomputed row
        (left padding repeats a position and is marked False in ``valid``);
        removed positions are absent. Default: none.
        """
        return {}

    def restricted_to_present(self, language_model: torch.nn.Module, present: Any) -> contextlib.AbstractContextManager:
        """Within the block, per-position inputs the decoder stack applies between layers follow the positions
        that pruning left: ``present()`` gives the original positions of the current hidden state. Default:
        the stack has none."""
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def skipped_layers(self, language_model: torch.nn.Module, layers: int) -> Iterator[None]:
        """Within the block, decoder layers 0..layers-1 pass their input through unchanged.

        A pass that starts from the hidden state a shared prefix computed
        entering layer ``layers`` runs the decoder stack's own loop (its masks,
        rotary embeddings and between-layer steps) from there on. Default: the
        stack calls each layer with the hidden state first and takes back a tensor.
        """
        modules = list(self.decoder_layers(language_model))[:layers]
        # under a device map accelerate wraps a layer's forward in an instance attribute: put that one back
        saved = [module.__dict__.get("forward") for module in modules]
        for module in modules:
            module.forward = _pass_through
        try:
            yield
        finally:
            for module, forward in zip(modules, saved):
                if forward is None:
                    del module.forward
                else:
                    module.forward = forward

    # -- attention pattern -----------------------------------------------
    # The engine, pruning and decoding build masks from these, always on ORIGINAL sequence positions:
    # deleting positions and slicing the original mask is what removal means (the README's What is measured section).
    def layer_types(self, language_model: torch.nn.Module) -> list[str]:
        """Per decoder layer, its attention type; layers of one type share a mask and a rotary embedding."""
        return ["causal"] * len(self.decoder_layers(language_model))

    def attention_layout(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> Any:
        """What :meth:`attends` needs to know about one sample besides positions (None for causal attention)."""
        return None

    def attends(self, layout: Any, layer_type: str, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Whether original position ``query`` may attend to ``key`` in a layer of ``layer_type`` (broadcast, bool)."""
        return key <= query

    def first_changed(self, layout: Any, position: int) -> int:
        """First position whose keys and values can change when positions from ``position`` on change (causal: it)."""
        return position

    def decoder_masks(self, masks: dict[str, torch.Tensor]) -> Any:
        """The ``attention_mask`` the decoder stack takes, given each layer type's 4D mask: one tensor here."""
        (mask,) = masks.values()
        return mask

    def skip_rotary(self, lm_envoy: Any, rotary: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Within a trace of the decoder stack, hand it the recorded rotary embedding instead of recomputing it."""
        (cos_sin,) = rotary.values()
        self.rotary_module(lm_envoy).skip(cos_sin)

    def unwindowed_cache(self, model: torch.nn.Module) -> Any:
        """A KV cache keeping every position of every layer, or None where the model's own one does."""
        return None

    # -- caches ----------------------------------------------------------
    def cache_keyword(self, module: torch.nn.Module) -> str:
        """The keyword ``module``'s forward takes its KV cache by.

        transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old
        name warns and goes away in 5.40); earlier 5.x releases only know the
        old one. Reading the signature supports both without a version table.
        """
        params = inspect.signature(module.forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    def cache_kwargs(self, module: torch.nn.Module, cache: Any) -> dict[str, Any]:
        return {self.cache_keyword(module): cache}

    def make_cache(self, layers: list[tuple[torch.Tensor, torch.Tensor] | None]) -> Any:
        """A KV cache holding ``layers[j]`` = (keys, values) for layer j; None leaves a layer empty."""
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=[kv if kv is not None else (None, None) for kv in layers])

    def copy_cache_layers(self, target: Any, source: Any, layers: int) -> None:
        """Give ``target`` its own copy of what ``source`` caches for layers 0..layers-1 (a shared prefix's)."""
        for j in range(layers):
            target.layers[j] = copy.deepcopy(source.layers[j])

    def output_cache(self, output: Any) -> Any:
        """The KV cache a forward pass returned, under either of transformers' names."""
        fields = output.keys() if hasattr(output, "keys") else ()
        return output["cache"] if "cache" in fields else output.past_key_values

    # -- output head -----------------------------------------------------
    def scored_logits(self, language_model: torch.nn.Module, lm_head: torch.nn.Module,
                      hidden: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
        """Logits in at least float32 from the last decoder layer's output ``hidden`` (..., D).

        The final norm and the output projection run in float32 (float64 for a
        float64 model) whatever the model's dtype: in bfloat16 the logits themselves are rounded to about
        three significant digits, which alone moves small scores. The
        projection goes in vocabulary chunks so no float32 copy of the whole
        head is held. Llama-style RMSNorm upcasts to float32 inside and only
        casts back to its input's dtype, so a float32 input stays float32.
        """
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        norm = self.final_norm(language_model)
        with materialized(norm, lm_head):
            x = norm(hidden.to(device=execution_device(norm), dtype=dtype))
            weight, bias = lm_head.weight, getattr(lm_head, "bias", None)
            x = x.to(weight.device)  # under a device map the head may sit elsewhere
            parts = []
            for start in range(0, weight.shape[0], chunk):
                w = weight[start : start + chunk].to(dtype)
                b = bias[start : start + chunk].to(dtype) if bias is not None else None
                parts.append(torch.nn.functional.linear(x, w, b))
        return torch.cat(parts, dim=-1)

    # -- processing ------------------------------------------------------
    def load_processor(self, source: str, trust_remote_code: bool) -> Any:
        """transformers' processor; where it cannot be built (no torchvision), the family's image-only one."""
        from transformers import AutoProcessor

        try:
            return AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
        except (AttributeError, ImportError, ValueError) as exc:
            if self.image_only_processor is None:
                raise
            from .processors import fallback_warning

            fallback_warning(self.name, exc)
            return self.image_only_processor.from_pretrained(source, trust_remote_code)

    def prompt(self, processor: Any, question: str, n_images: int = 1) -> str:
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": question}]
        messages = [{"role": "user", "content": content}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def encode(self, processor: Any, images: list[Image.Image], prompt: str) -> dict[str, torch.Tensor]:
        return dict(processor(images=images, text=prompt, return_tensors="pt"))

    def check_image_count(self, n_images: int, where: str) -> None:
        """Refuse, in one line naming ``where``, a prompt with more images than the family takes."""
        if self.max_images is not None and n_images > self.max_images:
            raise HorizonError(
                f"{where} has {n_images} images but {self.name} models take at most {self.max_images} per prompt"
            )

    # -- geometry --------------------------------------------------------
    def view(self, processor: Any, size: tuple[int, int], grid: tuple[int, int]) -> tuple[float, float, float, float]:
        """Rectangle (x0, y0, x1, y1), in the original image's pixels, that a token grid of shape ``grid`` spans.

        ``size`` is the original (W, H). Cells are uniform inside it (resizing
        is linear); it extends past the image where the processor pads and is
        a sub-rectangle where it crops. Default: the whole image.
        """
        w, h = size
        return (0.0, 0.0, float(w), float(h))

    def grid_views(self, processor: Any, size: tuple[int, int],
                   grids: list[ImageGrid]) -> list[tuple[float, float, float, float]]:
        """View rectangle of each of one image's grids: its ``region`` of the family's :meth:`view`.

        A tile covering the fractions (fx0, fy0, fx1, fy1) of the processed
        image spans that part of the rectangle the whole processed image spans.
        """
        rects = []
        for g in grids:
            x0, y0, x1, y1 = self.view(processor, size, (g.height, g.width))
            fx0, fy0, fx1, fy1 = g.region
            rects.append((x0 + fx0 * (x1 - x0), y0 + fy0 * (y1 - y0), x0 + fx1 * (x1 - x0), y0 + fy1 * (y1 - y0)))
        return rects

    def grid_shapes(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], n_images: int) -> list[tuple[int, int]]:
        """(rows, cols) of every image's token grid, in sequence order."""
        raise NotImplementedError(f"{type(self).__name__} must implement grid_shapes")

    def visual_positions(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[int]:
        """Sequence positions of the visual patch tokens, every image, in order: what is grouped and pruned.

        Tokens inside an image's span that are not patches (row separators, a
        learned newline) are left out: they carry no image region.
        """
        return sorted(g.position(r, c) for g in self.grids(model, inputs) for r in range(g.height) for c in range(g.width))

    def grids(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[ImageGrid]:
        """Token grids of every image, in sequence order, each naming its image.

        Default: one grid per image, shapes from :meth:`grid_shapes`, laid out
        as row-major runs of the image token (with ``row_separators`` after
        each row). Families whose images have several grids (base + high
        resolution, tiles + thumbnail) override this and set each grid's
        ``image``, ``level`` and ``region``.
        """
        ids = inputs["input_ids"][0]
        visual = (ids == self.image_token_id(model)).nonzero().flatten().tolist()
        shapes = self.grid_shapes(model, inputs, max(1, len(visual)))
        grids, i = [], 0
        stride_of = (lambda w: w + self.row_separators)
        for image, (h, w) in enumerate(shapes):
            run = visual[i : i + h * w]
            expected = [run[0] + r * stride_of(w) + c for r in range(h) for c in range(w)] if run else []
            if len(run) != h * w or run != expected:
                layout = "row-major runs" + (f" with {self.row_separators} separator token(s) after each row"
                                             if self.row_separators else ", contiguous")
                raise HorizonError(
                    f"{self.name}: cannot map the prompt's {len(visual)} image tokens onto grids {shapes} ({layout} expected)"
                )
            grids.append(ImageGrid(run[0], h, w, stride_of(w) if self.row_separators else None, image=image))
            i += h * w
        if i != len(visual):
            raise HorizonError(f"{self.name}: {len(visual)} image tokens but grids {shapes} hold {i}")
        return grids


ADAPTERS: Registry[type[Adapter]] = Registry("model type")


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: serve every ``cls.model_types`` with ``cls``."""
    for model_type in cls.model_types:
        ADAPTERS.register(model_type, cls)
    return cls


def supported_model_types() -> list[str]:
    return list(ADAPTERS.names())


def missing_methods(cls: type[Adapter]) -> list[str]:
    """Required methods ``cls`` leaves to the base class (which only raises)."""
    return [name for name in cls.required if getattr(cls, name) is getattr(Adapter, name)]


def adapter_for(config: Any) -> Adapter:
    """The adapter for a transformers config, or a one-line error listing the registered model types."""
    model_type = getattr(config, "model_type", None)
    if model_type in ADAPTERS:
        return ADAPTERS.get(model_type)()
    archs = ", ".join(getattr(config, "architectures", None) or [str(model_type)])
    raise HorizonError(
        f"unsupported architecture {archs} (model_type {model_type!r}); "
        f"supported model types: {', '.join(supported_model_types())}"
    )
