"""One decoding rule everywhere, checked against transformers' own ``generate``.

The tiny checkpoints here ship a ``generation_config.json`` with a
repetition penalty (as Qwen2.5-VL ships 1.05), strong enough to change the
random model's greedy answer, so a code path that ignores it, or applies it
where the rule says not to, gives different tokens than ``generate``.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from transformers import GenerationConfig

import horizon
from horizon.decoding import Decoding
from horizon.prune import prune_eval
from horizon.scan import encode_sample, greedy_answer
from horizon.data import read_jsonl
from horizon.tiny import build_tiny
from helpers import error_of

from conftest import ARCHS, write_dataset

PENALTY = 1.8
NEW_TOKENS = 12


def with_generation_config(path, **fields):
    config = GenerationConfig.from_pretrained(path)
    for name, value in fields.items():
        setattr(config, name, value)
    config.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def penalised(tmp_path_factory):
    root = tmp_path_factory.mktemp("penalty")
    out = {}
    for name in ("llava", "qwen2_5_vl"):
        path = build_tiny(root / name, arch=ARCHS[name]["arch"], grid=ARCHS[name]["grid"], layers=2, seed=5)
        with_generation_config(path, repetition_penalty=PENALTY)
        out[name] = (horizon.load(path, dtype="float32", device="cpu"),
                     write_dataset(root / f"data-{name}", 3, ARCHS[name]["image"]))
    return out


def reference(vlm, inputs, **overrides):
    """transformers' generate, greedy, with the checkpoint's generation config (plus overrides); eos dropped."""
    with torch.no_grad():
        out = vlm.hf.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, **overrides)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    eos = vlm.hf.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    return new[: next((i for i, t in enumerate(new) if t in eos), len(new))]


@pytest.mark.parametrize("name", ["llava", "qwen2_5_vl"])
def test_scan_and_prune_eval_decode_as_generate_does(penalised, name, tmp_path):
    vlm, data = penalised[name]
    samples = read_jsonl(data)
    assert Decoding.for_model(vlm.hf).repetition_penalty == PENALTY
    differs = 0
    for sample in samples:
        inputs = encode_sample(vlm, sample)[0]
        with_config = reference(vlm, inputs)  # generate applies the shipped penalty
        raw = reference(vlm, inputs, repetition_penalty=1.0)
        differs += with_config != raw
        assert greedy_answer(vlm, inputs, NEW_TOKENS, "checkpoint") == with_config
        assert greedy_answer(vlm, inputs, NEW_TOKENS, "greedy") == raw
    assert differs, "the penalty must change some answer, or this test checks nothing"

    for rule, kwargs in (("checkpoint", {}), ("greedy", {"repetition_penalty": 1.0})):
        result = prune_eval(vlm, data, out=tmp_path / rule, schedule="none", decoding=rule,
                            max_new_tokens=NEW_TOKENS, progress=False)
        for sample, row in zip(samples, result.predictions.itertuples()):
            expected = reference(vlm, encode_sample(vlm, sample)[0], **kwargs)
            assert row.prediction == vlm.tokenizer.decode(expected, skip_special_tokens=True).strip()
        recorded = json.loads((tmp_path / rule / "eval.json").read_text())["decoding"]
        assert recorded == {"rule": rule, "repetition_penalty": PENALTY if rule == "checkpoint" else 1.0,
                            "no_repeat_ngram_size": 0}

    run = horizon.scan(vlm, data, out=tmp_path / "run", target="pred", group=3, metrics=("dlogp",),
                       max_new_tokens=NEW_TOKENS, progress=False)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["decoding"]["repetition_penalty"] == PENALTY
    for sample, row in zip(samples, run.samples.itertuples()):
        expected = reference(vlm, encode_sample(vlm, sample)[0])
        assert row.clean_pred == vlm.tokenizer.decode(expected, skip_special_tokens=True).strip()
        assert list(row.answer_ids) == expected[: row.scored_offset + 1]  # --target pred teacher-forces it


def test_a_generation_config_greedy_cannot_honour_is_refused(tmp_path):
    path = build_tiny(tmp_path / "beams", arch="llava", grid=(2, 2), layers=1)
    with_generation_config(path, num_beams=4)
    vlm = horizon.load(path, dtype="float32", device="cpu")
    data = write_dataset(tmp_path / "data", 1, (16, 16))
    error_of(lambda: horizon.scan(vlm, data, progress=False), "num_beams=4", "--decoding greedy")
    assert len(horizon.scan(vlm, data, decoding="greedy", group=2, progress=False).samples) == 1


@pytest.mark.parametrize("name", ["llava", "qwen2_5_vl"])
def test_no_deprecated_cache_argument_on_the_newest_transformers(models, dataset, name, tmp_path):
    """The KV cache goes by the keyword the installed transformers expects: no FutureWarning at all."""
    import transformers

    vlm, data = models[name], dataset(name, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the repository's pytest config ignores FutureWarning; not here
        horizon.scan(vlm, data, protocol="remove", target="pred", group=2, metrics=("dlogp",), progress=True)
        horizon.scan(vlm, data, protocol="keep", group=2, progress=False)
        prune_eval(vlm, data, schedule="random@1:2", seeds=1, progress=False)
    assert transformers.__version__  # recorded by the run; CI installs the newest release pyproject allows


@pytest.mark.parametrize("protocol", ["remove", "keep"])
def test_progress_reaches_each_sample_end_exactly(models, dataset, protocol):
    """The bar is moved to the fraction of a sample done, never past it (tqdm warns 'clamping frac' when n > total).

    20 batches: 1/20 added twenty times is 1 + 2e-16, the overshoot that made tqdm warn.
    """
    from horizon.scan import ScanConfig, scan_sample

    vlm = models["llava"]
    sample = read_jsonl(dataset("llava", 1))[0]
    cfg = ScanConfig(layers="0:2", group=2, protocol=protocol, batch_size=1)
    cfg.validate()
    seen: list[float] = []
    scan_sample(vlm, sample, cfg, [0, 1], on_batch=seen.append)
    assert len(seen) == 20 + (1 if protocol == "keep" else 0)
    assert seen == sorted(seen) and all(0 < f <= 1 for f in seen) and seen[-1] == 1.0
