"""Budgets that fit every image: percentages resolved per sample, capped fixed budgets, DART's count.

The tiny Qwen2.5-VL of conftest gives a 56x84 image 20 visual tokens and a
112x168 one 12 (dynamic resolution at a fixed pixel count), so one dataset
holds samples of two sizes. Expected counts come from the processor's
``image_grid_thw`` (t * h * w / merge^2) and from the generation's own
``visual_per_layer``, never from the schedule code under test.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from horizon.cli import main
from horizon.data import read_jsonl
from horizon.errors import HorizonError
from horizon.prune import Stage, parse_schedule, prune_eval, select
from horizon.prune.generate import generate
from horizon.prune.grid import GridConfig, grid_entries
from horizon.scan import encode_sample
from helpers import error_of

SIZES = {"q0": (56, 84), "q1": (112, 168), "q2": (112, 168)}  # (h, w) pixels
TASKS = {"q0": "ocr", "q1": "ocr", "q2": "vqa"}


pytestmark = pytest.mark.usefixtures("one_thread")


def mixed_dataset(root: Path) -> Path:
    """Three samples: q0 a 56x84 image, q1 and q2 112x168 images."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    rows = []
    for sid, (h, w) in SIZES.items():
        Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")).save(root / "img" / f"{sid}.png")
        rows.append({"id": sid, "image": f"img/{sid}.png", "question": "what is the color of the shape?",
                     "answer": "red", "task": TASKS[sid]})
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def grid_tokens(vlm, sample) -> int:
    """Visual tokens of a sample from the processor's grid: t * h * w patches, merged 2 x 2."""
    inputs = encode_sample(vlm, sample)[0]
    t, h, w = inputs["image_grid_thw"][0].tolist()
    return t * h * w // 4


def half_up(numerator: int, denominator: int) -> int:
    """floor(numerator / denominator + 1/2) in integers."""
    return (2 * numerator + denominator) // (2 * denominator)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture
def qwen(models):
    return models["qwen2_5_vl"]


@pytest.fixture
def mixed(tmp_path, qwen):
    data = mixed_dataset(tmp_path / "mixed")
    counts = {s.id: grid_tokens(qwen, s) for s in read_jsonl(data)}
    assert counts == {"q0": 20, "q1": 12, "q2": 12}  # two sizes, as the tests below need
    return data, counts


def test_a_fixed_budget_above_a_small_images_tokens_keeps_them_all_and_is_counted_capped(qwen, mixed, tmp_path):
    data, counts = mixed
    out = tmp_path / "fixed"
    result = prune_eval(qwen, data, out=out, schedule="divprune@0:16", max_new_tokens=2, progress=False)
    rows = {r["sample_id"]: r for r in lines(out / "predictions.jsonl")}
    assert set(rows) == {"q0", "q1", "q2"} and all(r["status"] == "ok" for r in rows.values())  # nothing dropped
    # q0 (20 tokens) keeps 16; q1 and q2 (12 tokens) keep all 12, and say so
    assert rows["q0"]["visual_per_layer"] == [16, 16, 16] and rows["q0"]["capped"] is False
    for sid in ("q1", "q2"):
        assert rows[sid]["n_visual"] == counts[sid] == 12
        assert rows[sid]["visual_per_layer"] == [12, 12, 12]
        assert rows[sid]["capped"] is True and rows[sid]["capped_stages"] == ["divprune@0:16 > 12"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_capped"] == 2 and result.summary["n_capped"] == 2
    assert {t["task"]: t["n_capped"] for t in summary["tasks"]} == {"ocr": 1, "vqa": 1}
    csv = pd.read_csv(out / "summary.csv").set_index("task")
    assert csv.loc["all", "n_capped"] == 2 and csv.loc["ocr", "n_capped"] == 1 and csv.loc["vqa", "n_capped"] == 1
    # the paper's accounting per sample, then averaged: 16 of 20 and 12 of 12
    assert summary["avg_retained_fraction"] == pytest.approx((16 / 20 + 1 + 1) / 3)
    assert summary["avg_visual_tokens"] == pytest.approx((16 + 12 + 12) / 3)


def test_cli_says_how_many_samples_were_capped_and_that_both_token_numbers_are_averages(checkpoints, mixed,
                                                                                        tmp_path, capsys):
    data, _ = mixed
    out = tmp_path / "cli"
    assert main(["prune-eval", "--model", str(checkpoints["qwen2_5_vl"]), "--data", str(data), "--schedule",
                 "random@1:16", "--seeds", "1", "--max-new-tokens", "2", "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out.splitlines()
    # (20 + 16 + 16) / 3 for q0, 12 for q1 and q2: a mean of 13.8 per layer, of a mean (20 + 12 + 12) / 3 = 14.67
    avg = ((20 + 16 + 16) / 3 + 12 + 12) / 3
    assert f"{avg:.1f} visual tokens per layer on average, of 14.67 per sample on average" in printed[0], printed[0]
    retained = ((20 + 16 + 16) / 3 / 20 + 1 + 1) / 3
    assert f"({retained:.1%} retained on average)" in printed[0]
    assert "2 of 3 samples capped (a budget above their visual tokens kept them all)" in printed[0]
    assert any(x.strip().startswith("ocr:") and x.endswith(", 1 of 2 capped)") for x in printed), printed


def test_percentage_budgets_resolve_per_sample_round_half_up(qwen, mixed, tmp_path):
    data, counts = mixed
    out = tmp_path / "percent"
    # 37.5% of 20 = 7.5 -> 8 and of 12 = 4.5 -> 5; 12.5% of 20 = 2.5 -> 3 and of 12 = 1.5 -> 2
    # (Python's round() would give 8, 4, 2, 2: half up is not banker's rounding). Later stages: of the original n.
    prune_eval(qwen, data, out=out, schedule="divprune@0:37.5%,random@2:12.5%", seeds=1, max_new_tokens=2,
               progress=False)
    rows = {r["sample_id"]: r for r in lines(out / "predictions.jsonl")}
    expected = {"q0": (8, 3), "q1": (5, 2), "q2": (5, 2)}
    for sid, (first, second) in expected.items():
        n = counts[sid]
        assert (half_up(375 * n, 1000), half_up(125 * n, 1000)) == (first, second)
        row = rows[sid]
        assert row["n_visual"] == n
        assert row["visual_per_layer"] == [first, first, second], (sid, row["visual_per_layer"])
        assert row["schedule"] == "divprune@0:37.5%,random@2:12.5%"
        assert row["resolved_schedule"] == f"divprune@0:{first},random@2:{second}"
        assert row["capped"] is False
        assert row["retained_fraction"] == pytest.approx((2 * first + second) / 3 / n)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["avg_retained_fraction"] == pytest.approx(
        np.mean([(2 * f + s) / 3 / counts[i] for i, (f, s) in expected.items()]))
    assert summary["n_capped"] == 0


def test_a_later_percentage_above_what_is_left_is_capped(qwen, mixed, tmp_path):
    data, counts = mixed
    out = tmp_path / "mixed-units"
    # 10 fixed, then 60% of the original n: q0 60% of 20 = 12 > 10 present (capped, keeps 10);
    # q1 60% of 12 = 7.2 -> 7 <= 10 present
    prune_eval(qwen, data, out=out, schedule="divprune@0:10,random@2:60%", seeds=1, max_new_tokens=2,
               progress=False, limit=2)
    rows = {r["sample_id"]: r for r in lines(out / "predictions.jsonl")}
    assert rows["q0"]["visual_per_layer"] == [10, 10, 10] and rows["q0"]["capped"] is True
    assert rows["q0"]["capped_stages"] == ["random@2:12 > 10"]
    assert rows["q1"]["visual_per_layer"] == [10, 10, 7] and rows["q1"]["capped"] is False
    assert rows["q1"]["resolved_schedule"] == "divprune@0:10,random@2:7"


def test_schedule_percentages_parse_and_bad_ones_are_one_line_errors():
    s = parse_schedule("divprune@0:50%,random@20:12.5%", n_layers=32, n_visual=234)
    assert str(s) == "divprune@0:117,random@20:29"  # 117; 29.25 -> 29
    assert s.text == "divprune@0:50%,random@20:12.5%"
    assert s.tokens_at(0, 234) == 117 and s.tokens_at(20, 234) == 29
    big = parse_schedule("divprune@0:50%,random@20:12.5%", n_layers=32, n_visual=3834)
    assert str(big) == "divprune@0:1917,random@20:479"  # 479.25 -> 479
    assert str(parse_schedule("random@1:1%", 3, 10)) == "random@1:1"  # 0.1 -> at least 1
    assert str(parse_schedule("random@1:0%", 3, 10)) == "random@1:0"  # 0% is 0
    assert str(parse_schedule("random@1:100%", 3, 10)) == "random@1:10"
    assert str(parse_schedule("random@1:25%", 3, 10)) == "random@1:3"  # 2.5 -> 3, half up
    for bad, needles in [("divprune@0:150%", ["'150%'", "more than 100%"]),
                         ("divprune@0:abc%", ["'abc%'", "percentage"]),
                         ("divprune@0:5.5", ["'5.5'", "token count"]),
                         ("divprune@0:%", ["'%'"]),
                         ("divprune@0:25%,random@2:50%", ["random@2 keeps 50%", "only 25%"]),
                         ("random@1:20,random@2:30", ["random@2 keeps 30", "only 20"])]:
        for cap in (False, True):
            error_of(lambda: parse_schedule(bad, 32, 576, cap=cap), "--schedule", *needles)
    # a fixed budget above the sample's tokens: an error, unless capped (prune_eval caps)
    error_of(lambda: parse_schedule("divprune@0:288", 32, 234), "keeps 288", "only 234")
    capped = parse_schedule("divprune@0:288", 32, 234, cap=True)
    assert capped.tokens_at(0, 234) == 234 and [str(st.keep) for st in capped.capped(234)] == ["288"]


def test_grid_and_cli_budgets_take_percentages(capsys, checkpoints, tmp_path):
    cfg = GridConfig(methods=("divprune",), budgets=("50%", 8), prune_layer=1, switch_layers=(2,))
    cfg.validate(3)
    names = {e["config"].schedule for e in grid_entries(cfg)}
    assert names == {"none", "divprune@1:50%", "divprune@1:50%,random@2:12.5%", "divprune@1:8",
                     "divprune@1:8,random@2:2"}
    for budgets, needle in ((("150%",), "more than 100%"), (("0%",), "positive"), (("x",), "'x'")):
        error_of(lambda: GridConfig(budgets=budgets, switch_layers=(3,)).validate(4), "--budgets", needle)
    error_of(lambda: GridConfig(deep_keep="abc%", switch_layers=(3,)).validate(4), "--deep-keep", "'abc%'")
    assert main(["prune-grid", "--model", str(checkpoints["llava"]), "--data", str(tmp_path / "none.jsonl"),
                 "--budgets", "50%,120%", "--out", str(tmp_path / "g"), "-q"]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("horizon: error:")]
    assert len(err) == 1 and "--budgets '50%,120%'" in err[0] and "more than 100%" in err[0], err


def test_dart_count_equals_what_dart_keeps(models, tmp_path):
    # pure strategy: every (available, budget <= available) with 4 text tokens after the image
    torch.manual_seed(0)
    for available in range(1, 21):
        for keep in range(0, available + 1):
            visual, text = torch.arange(2, 2 + available), torch.cat([torch.arange(2), torch.arange(2 + available,
                                                                                                     8 + available)])
            n = 8 + available
            kept = select("dart", visual, keep, keys=torch.randn(n, 6), hidden=torch.randn(n, 5), text=text)
            assert Stage("dart", 2, keep).kept(available) == len(kept), (available, keep)
    # a capped DART stage below 8 (its pivots-only regime): 25% of 25 = 6 > 5 present keeps all 5, not 4
    llava = models["llava"]
    assert Stage("dart", 1, 6).kept(5) == 5
    schedule = parse_schedule("divprune@0:5,dart@1:25%", 3, 25, cap=True)
    assert str(schedule) == "divprune@0:5,dart@1:6"
    rng = np.random.default_rng(1)
    from horizon.data import Sample
    path = tmp_path / "img.png"
    Image.fromarray((rng.random((40, 40, 3)) * 255).astype("uint8")).save(path)
    inputs = encode_sample(llava, Sample("d", path, "what is the color of the shape?", ["red"], "t"))[0]
    gen = generate(llava, inputs, schedule, max_new_tokens=1)
    assert gen.visual_per_layer == [5, 5, 5]
    assert [schedule.tokens_at(l, 25) for l in range(3)] == gen.visual_per_layer


def test_cli_names_skipped_samples(checkpoints, dataset, tmp_path, capsys):
    data = dataset("llava", 4)
    (data.parent / "img" / "1.png").unlink()
    (data.parent / "img" / "3.png").write_bytes(b"not an image")
    out = tmp_path / "skip"
    assert main(["prune-eval", "--model", str(checkpoints["llava"]), "--data", str(data), "--schedule", "none",
                 "--on-error", "skip", "--max-new-tokens", "2", "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out.splitlines()
    reasons = {r["sample_id"]: r["status"] for r in lines(out / "predictions.jsonl") if r["status"] != "ok"}
    assert set(reasons) == {"q1", "q3"}
    match = re.search(r"skipped 2 samples \(status error\): q1 \((.+)\), q3 \((.+)\)$", printed[0])
    assert match, printed[0]
    assert f"error: {match.group(1)}" == reasons["q1"] and f"error: {match.group(2)}" == reasons["q3"]
    assert "on 2 samples" in printed[0]
