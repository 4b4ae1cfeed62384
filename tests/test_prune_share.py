"""Shared prefixes and batched generation against today's path: one unshared batch-1 ``generate`` per answer.

* continuing a shared prefix reproduces ``generate`` bit for bit on every registered family;
* a left-padded batch (rows of different samples, prompt lengths, schedules and seeds) gives the
  answers of batch 1, its logits within float rounding;
* a grid run with shared prefixes (batch 1 and batched) writes the predictions the unshared loop
  writes, and a killed grid resumes to the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from horizon.cli import main
from horizon.data import Sample, read_jsonl
from horizon.prune import Schedule, parse_schedule
from horizon.prune import evaluate, prefix as prefix_module
from horizon.prune.evaluate import PruneConfig, prune_eval
from horizon.prune.generate import generate
from horizon.prune.grid import GridConfig, prune_grid
from horizon.prune.prefix import BatchRow, continue_batch, continue_generation, shared_prefix
from horizon.scan import encode_sample

from conftest import CONTRACT
from helpers import error_of

pytestmark = pytest.mark.usefixtures("one_thread")

BATCHED = ["llava", "qwen2_5_vl", "mistral3", "idefics3"]  # 1-D RoPE, M-RoPE, row separators, tiles
REFUSED = {"gemma3": "image-blocks", "qwen3_vl": "DeepStack"}


def schedules(nv: int) -> list[tuple[str, int]]:
    """(schedule, seed): every method, one and two stages, random under two seeds, no stage at all."""
    return [("none", 0), (f"random@1:{nv // 3}", 0), (f"random@1:{nv // 3}", 1), (f"fastv@1:{nv // 2}", 0),
            (f"divprune@1:{nv // 2},random@2:{max(1, nv // 5)}", 2), ("dart@1:8", 0),
            (f"divprune@1:{nv // 2},fastv@2:3", 0)]


def parsed(text: str, vlm, nv: int) -> Schedule:
    return Schedule(()) if text == "none" else parse_schedule(text, vlm.n_layers, nv)


def n_visual(vlm, inputs) -> int:
    return len(vlm.adapter.visual_positions(vlm.hf, inputs))


def same_answer(a, b) -> bool:
    return (a.tokens == b.tokens and a.text == b.text and a.kept == b.kept
            and a.visual_per_layer == b.visual_per_layer and a.tokens_per_layer == b.tokens_per_layer)


@pytest.mark.slow
@pytest.mark.parametrize("name", CONTRACT)
def test_shared_prefix_continuation_is_generate_exactly(models, dataset, name):
    vlm = models[name]
    inputs = encode_sample(vlm, read_jsonl(dataset(name, 1))[0])[0]
    nv = n_visual(vlm, inputs)
    at_one = shared_prefix(vlm, inputs, 1)  # one prefix for every schedule starting at layer 1 (and none)
    at_zero = shared_prefix(vlm, inputs, 0)
    cases = [(text, seed, at_one) for text, seed in schedules(nv)] + [("random@0:5", 4, at_zero), ("none", 0, at_zero)]
    for text, seed, prefix in cases:
        schedule = parsed(text, vlm, nv)
        today = generate(vlm, inputs, schedule, max_new_tokens=5, seed=seed, return_logits=True)
        shared = continue_generation(vlm, prefix, schedule, max_new_tokens=5, seed=seed, return_logits=True)
        assert same_answer(today, shared), (text, seed, today.tokens, shared.tokens)
        assert len(today.logits) == len(shared.logits) >= 1
        for a, b in zip(today.logits, shared.logits):
            assert torch.equal(a, b), (text, seed, (a - b).abs().max())
    # the prefix is not consumed: a second continuation of it is the same again
    again = continue_generation(vlm, at_one, parsed(f"random@1:{nv // 3}", vlm, nv), max_new_tokens=5, seed=1)
    assert same_answer(again, generate(vlm, inputs, parsed(f"random@1:{nv // 3}", vlm, nv), max_new_tokens=5, seed=1))


def test_prefix_refuses_a_schedule_starting_elsewhere(models, dataset):
    vlm = models["llava"]
    inputs = encode_sample(vlm, read_jsonl(dataset("llava", 1))[0])[0]
    prefix = shared_prefix(vlm, inputs, 1, methods=())
    error_of(lambda: continue_generation(vlm, prefix, parse_schedule("random@2:4", vlm.n_layers, 25)),
             "starts at layer 2", "ends at layer 1")
    error_of(lambda: continue_generation(vlm, prefix, parse_schedule("fastv@1:4", vlm.n_layers, 25)),
             "without what fastv reads at layer 0")


def two_prompts(vlm, dataset, name) -> list[dict]:
    """Two samples whose prompts differ in length (another question)."""
    samples = read_jsonl(dataset(name, 2))
    samples[1] = Sample(samples[1].id, samples[1].image, "what is in the picture here today, and why?",
                        samples[1].answers)
    encoded = [encode_sample(vlm, s)[0] for s in samples]
    assert encoded[0]["input_ids"].shape[1] != encoded[1]["input_ids"].shape[1]
    return encoded


@pytest.mark.parametrize("name", BATCHED)
def test_batched_generation_gives_the_answers_of_batch_one(models, dataset, name):
    vlm = models[name]
    rows = []
    for inputs in two_prompts(vlm, dataset, name):
        nv = n_visual(vlm, inputs)
        prefix = shared_prefix(vlm, inputs, 1)
        rows += [BatchRow(prefix, parsed(text, vlm, nv), seed) for text, seed in schedules(nv)]
    batched = continue_batch(vlm, rows, max_new_tokens=6, return_logits=True)
    for row, got in zip(rows, batched):
        alone = generate(vlm, row.prefix.inputs, row.schedule, max_new_tokens=6, seed=row.seed, return_logits=True)
        assert same_answer(alone, got), (row.schedule, row.seed, alone.tokens, got.tokens)
        assert len(alone.logits) == len(got.logits)
        for a, b in zip(alone.logits, got.logits):
            # padded shapes sum in another order: float32 rounding, far below any margin between tokens
            assert torch.allclose(a, b, atol=1e-5, rtol=0), (row.schedule, (a - b).abs().max())
    # and batching is real: rows differ (the random seeds choose other tokens)
    assert batched[1].kept != batched[2].kept


def test_batched_rows_stop_at_their_own_eos(models, dataset):
    vlm = models["llava"]
    rows = []
    for inputs in two_prompts(vlm, dataset, "llava"):
        prefix = shared_prefix(vlm, inputs, 1)
        rows += [BatchRow(prefix, Schedule(()), 0), BatchRow(prefix, parse_schedule("random@1:3", vlm.n_layers, 25), 5)]
    alone = [generate(vlm, r.prefix.inputs, r.schedule, max_new_tokens=8, seed=r.seed) for r in rows]
    # make eos the token some row generates first, so that row stops at once while the others go on
    eos = alone[0].tokens[0]
    before = vlm.hf.generation_config.eos_token_id
    vlm.hf.generation_config.eos_token_id = eos
    try:
        alone = [generate(vlm, r.prefix.inputs, r.schedule, max_new_tokens=8, seed=r.seed) for r in rows]
        batched = continue_batch(vlm, rows, max_new_tokens=8)
    finally:
        vlm.hf.generation_config.eos_token_id = before
    assert alone[0].tokens == [] and any(len(g.tokens) > 2 for g in alone)
    assert [g.tokens for g in batched] == [g.tokens for g in alone]


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_batching_is_refused_where_it_would_differ(models, dataset, name, tmp_path):
    vlm = models[name]
    inputs = encode_sample(vlm, read_jsonl(dataset(name, 1))[0])[0]
    prefix = shared_prefix(vlm, inputs, 1)
    rows = [BatchRow(prefix, Schedule(()), 0)] * 2
    error_of(lambda: continue_batch(vlm, rows, max_new_tokens=2), "--batch-size", REFUSED[name])
    error_of(lambda: prune_eval(vlm, dataset(name, 1), out=tmp_path / "e", batch_size=2, progress=False),
             "--batch-size", REFUSED[name])
    assert not (tmp_path / "e").exists()
    # batch 1 works
    assert continue_batch(vlm, rows[:1], max_new_tokens=2)[0].visual_per_layer


def test_batch_size_bad_values(models, checkpoints, dataset, tmp_path, capsys):
    for bad in (0, -2, 1.5, True):
        error_of(lambda: PruneConfig(batch_size=bad).validate(), "--batch-size must be a positive integer")
    error_of(lambda: PruneConfig(batch_size=2, share_prefix=False).validate(), "--batch-size", "share_prefix")
    error_of(lambda: prune_eval(models["llava"], dataset("llava", 1), batch_size=0, progress=False), "--batch-size")
    base = ["prune-eval", "--model", str(checkpoints["llava"]), "--data", str(dataset("llava", 1)), "-q", "--schedule", "none",
            "--out", str(tmp_path / "bad")]
    assert main([*base, "--batch-size", "0"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("horizon: error:")]
    assert len(err) == 1 and "--batch-size must be a positive integer, got 0" in err[0]
    with pytest.raises(SystemExit):
        main([*base, "--batch-size", "two"])  # argparse: not an integer
    assert not (tmp_path / "bad").exists()


# -- grids -------------------------------------------------------------------------------------

TIMING = ("seconds",)


def grid_files(out: Path) -> dict[str, list[dict]]:
    """Every entry's predictions without the timing, keyed by entry directory."""
    return {d.name: [{k: v for k, v in r.items() if k not in TIMING}
                     for r in map(json.loads, (d / "predictions.jsonl").read_text().splitlines())]
            for d in sorted(out.iterdir()) if d.is_dir()}


def grid_config(**eval_options) -> GridConfig:
    return GridConfig(methods=("random", "divprune", "fastv"), budgets=(8, 3), prune_layer=1, switch_layers=(2,),
                      eval=PruneConfig(seeds=2, max_new_tokens=3, **eval_options))


@pytest.mark.slow
def test_grid_with_shared_prefixes_writes_what_the_unshared_loop_writes_and_resumes(models, dataset, tmp_path,
                                                                                    monkeypatch):
    vlm = models["llava"]
    data = dataset("llava", 3)
    unshared = prune_grid(vlm, data, tmp_path / "unshared", grid_config(share_prefix=False), progress=False)
    expected = grid_files(tmp_path / "unshared")
    assert len(expected) == 1 + 3 * 2 * 2  # none, singles and hybrids
    assert all(len(rows) == 3 * 2 for rows in expected.values())
    for batch in (1, 4):
        out = tmp_path / f"shared-{batch}"
        shared = prune_grid(vlm, data, out, grid_config(batch_size=batch), progress=False)
        assert grid_files(out) == expected, batch
        timing = [c for c in shared.columns if "seconds" in c]
        pd.testing.assert_frame_equal(shared.drop(columns=timing), unshared.drop(columns=timing))
        summary = json.loads((out / "random@1-8" / "summary.json").read_text())
        assert "shared prefix" in summary["timing"]
    assert "one full generate" in json.loads((tmp_path / "unshared" / "none" / "summary.json").read_text())["timing"]

    # a killed grid: one entry cut after a line and a half, another never started, the grid.csv not written
    out = tmp_path / "shared-1"
    cut = out / "divprune@1-8" / "predictions.jsonl"
    text = cut.read_text()
    first = text.index("\n") + 1
    cut.write_text(text[: first + 20])
    (out / "fastv@1-3+random@2-1").mkdir(exist_ok=True)
    for name in ("predictions.jsonl", "summary.json", "summary.csv", "eval.json"):
        (out / "fastv@1-3+random@2-1" / name).unlink()
    (out / "grid.csv").unlink()
    made = []
    real = evaluate.continue_generation

    def counting(vlm, prefix, schedule, **kwargs):
        made.append(str(schedule))
        return real(vlm, prefix, schedule, **kwargs)

    monkeypatch.setattr(evaluate, "continue_generation", counting)
    resumed = prune_grid(vlm, data, out, grid_config(batch_size=1), progress=False)
    assert grid_files(out) == expected
    timing = [c for c in resumed.columns if "seconds" in c]
    pd.testing.assert_frame_equal(resumed.drop(columns=timing), unshared.drop(columns=timing))
    # only the missing answers ran: divprune's second seed of the first sample and both seeds of the others (no
    # random stage: one generation serves both seeds), and the removed entry's every sample and seed
    assert sum(m.startswith("divprune") for m in made) == 3 and sum(m.startswith("fastv") for m in made) == 6, made
    assert len(made) == 9


def test_prune_eval_with_seeds_shares_one_prefix_per_sample(models, dataset, tmp_path, monkeypatch):
    vlm = models["llava"]
    data = dataset("llava", 2)
    calls = []
    real = prefix_module.shared_prefix

    def counting(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "shared_prefix", counting)
    shared = prune_eval(vlm, data, schedule="divprune@1:6,random@2:3", seeds=3, max_new_tokens=3, progress=False)
    assert calls == [1, 1]  # one prefix per sample, at the first stage's layer
    unshared = prune_eval(vlm, data, schedule="divprune@1:6,random@2:3", seeds=3, max_new_tokens=3, progress=False,
                          share_prefix=False)
    columns = ["sample_id", "seed", "prediction", "visual_per_layer", "n_new_tokens", "score"]
    pd.testing.assert_frame_equal(shared.predictions[columns], unshared.predictions[columns])
    assert shared.predictions.seconds.gt(0).all()
