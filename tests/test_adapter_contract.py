"""The adapter contract: what every registered family must provide.

The behavioural half of the contract -- the clean pass equals the model's
logits, scores equal physical deletion, batching and prefix reuse change
nothing, keeping every token reproduces ``generate``, pruned prefill equals
the engine's removal, cached equals uncached decoding -- lives in
test_engine.py and test_prune_generate.py, parametrised over ``CONTRACT``
(every model type in the adapter registry). This file checks the registry
side: every family has a tiny checkpoint to run those tests on, implements
the required methods, and is what ``horizon.load`` picks for its config.
"""

from __future__ import annotations

import pytest
from transformers import AutoConfig

from horizon.errors import HorizonError
from horizon.models.adapter import ATTENTION_KINDS
from horizon.models import ADAPTERS, Adapter, LlavaAdapter, adapter_for, missing_methods, supported_model_types
from horizon.testing import TINY_FAMILIES

from conftest import CONTRACT


def test_every_registered_family_has_a_tiny_checkpoint_for_the_contract():
    missing = [t for t in supported_model_types() if t not in TINY_FAMILIES]
    assert not missing, f"registered model types without a horizon.testing.TINY_FAMILIES entry: {missing}"
    assert CONTRACT == sorted(ADAPTERS.names())


@pytest.mark.parametrize("model_type", CONTRACT)
def test_family_implements_the_required_methods(model_type):
    cls = ADAPTERS.get(model_type)
    assert issubclass(cls, Adapter) and model_type in cls.model_types
    assert missing_methods(cls) == [], f"{cls.__name__} does not implement {missing_methods(cls)}"
    assert cls.attention in ATTENTION_KINDS  # the kinds the engine derives removal and prefix reuse for
    if cls.attention != "causal":  # a non-causal kind comes with its rule and its prefix-reuse boundary
        assert cls.attends is not Adapter.attends and cls.first_changed is not Adapter.first_changed


@pytest.mark.parametrize("model_type", CONTRACT)
def test_load_picks_the_registered_adapter(checkpoints, models, model_type):
    config = AutoConfig.from_pretrained(checkpoints[model_type])
    assert config.model_type == model_type
    assert type(adapter_for(config)) is ADAPTERS.get(model_type)
    vlm = models[model_type]
    assert type(vlm.adapter) is ADAPTERS.get(model_type)
    assert vlm.n_layers == len(vlm.adapter.decoder_layers(vlm.language_model)) == 3


def test_an_incomplete_adapter_is_named_with_what_it_lacks():
    class Half(Adapter):
        name = "half"
        model_types = ("half",)

        def visual_features_path(self) -> str:
            return "model.visual"

    assert missing_methods(Half) == ["grid_shapes"]
    with pytest.raises(NotImplementedError, match="Half must implement grid_shapes"):
        Half().grid_shapes(None, {}, 1)
    assert missing_methods(LlavaAdapter) == []


def test_unsupported_architecture_lists_the_registry():
    config = AutoConfig.for_model("gpt2")
    with pytest.raises(HorizonError) as err:
        adapter_for(config)
    message = str(err.value)
    assert "\n" not in message and "model_type 'gpt2'" in message
    assert all(t in message for t in supported_model_types())


def test_a_non_causal_family_is_refused_by_the_engine(models):
    from horizon.ablation import ensure_maskable_attention

    vlm = models["llava"]

    class Bidirectional(LlavaAdapter):
        attention = "bidirectional-image"

    real = vlm.adapter
    vlm.adapter = Bidirectional()
    try:
        with pytest.raises(HorizonError, match="'bidirectional-image' attention mask is not supported"):
            ensure_maskable_attention(vlm)
    finally:
        vlm.adapter = real


@pytest.mark.parametrize("model_type", CONTRACT)
def test_recomputed_keys_and_last_token_attention_equal_the_layers_own(checkpoints, dataset, model_type):
    """``key_values`` (the engine's last layer) and ``last_token_attention`` (FastV) against the eager
    attention of every layer: its cached keys/values and its attention weights of the last position."""
    import torch

    import horizon
    from horizon.data import read_jsonl

    vlm = horizon.load(checkpoints[model_type], dtype="float32", device="cpu", attn_implementation="eager")
    sample = read_jsonl(dataset(model_type, 1))[0]
    inputs = vlm.adapter.encode(vlm.processor, [sample.load_image()],
                                vlm.adapter.prompt(vlm.processor, sample.question))
    seen = {}

    def grab(j):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            seen[j] = (hidden, kwargs[vlm.adapter.rotary_keyword], kwargs.get("attention_mask"))
        return hook

    hooks = [layer.register_forward_pre_hook(grab(j), with_kwargs=True) for j, layer in enumerate(vlm.layers)]
    # a family whose own cache keeps only a window of keys gives one that keeps every position
    cache = vlm.adapter.unwindowed_cache(vlm.hf)
    extra = {} if cache is None else vlm.adapter.cache_kwargs(vlm.hf, cache)
    try:
        with torch.no_grad():
            out = vlm.hf(**inputs, output_attentions=True, use_cache=True, **extra)
    finally:
        for h in hooks:
            h.remove()
    cache = vlm.adapter.output_cache(out)
    for j, layer in enumerate(vlm.layers):
        hidden, rotary, mask = seen[j]
        with torch.no_grad():
            keys, values = vlm.adapter.key_values(layer, hidden, rotary)
            weights = vlm.adapter.last_token_attention(layer, hidden, rotary, attention_mask=mask)
        assert torch.allclose(keys, cache.layers[j].keys, atol=1e-5), j
        assert torch.allclose(values, cache.layers[j].values, atol=1e-5), j
        assert torch.allclose(weights, out.attentions[j][0, :, -1].float(), atol=1e-5), j
