"""How closely do bfloat16 scans agree with float32, by effect size? And what does the float32 head buy?

For each model (by default two random-weight checkpoints built here with
``horizon.tiny.build_tiny``, wider and deeper than the test ones: LLaVA and
Qwen2.5-VL, 8 layers, hidden 256, a 2000-token vocabulary, lm_head scaled by 8
so that logits have the size trained heads give; or any local checkpoint given
with ``--model PATH``), the same samples are scanned three times (remove
protocol, metrics dlogp, dprob, kl, every layer, k x k windows, scoring the
model's own greedy answer by default, ``--target gt`` for the dataset's; samples
that a bf16 scan answers differently are left out and counted):

* ``fp32``      -- the model loaded in float32: the reference;
* ``bf16``      -- the model loaded in bfloat16, as the engine runs it now: bf16
                   decoder layers, float32 final norm + lm_head
                   (``Adapter.scored_logits``), float64 log-softmax and scores;
* ``bf16-head`` -- the same bfloat16 model with the *old* head: final norm and
                   lm_head in bfloat16 (logits rounded to bf16's 8-bit
                   significand), reproduced here by an Adapter subclass that
                   overrides ``scored_logits``; no library code is touched.

Every (sample, layer, group) score of a metric is put in a bin by its size
relative to the largest |fp32 score| of that metric over the whole model run,
|x| / max|x|: >= 10%, 1-10%, 0.1-1% and < 0.1% (plus "all"). Per bin the table
gives:

* ``n``          -- number of scores in the bin;
* ``pearson``, ``spearman`` -- correlation of bf16 with fp32 scores in the bin
                   (within a bin of small scores this asks whether bf16 still
                   orders the small effects like fp32 does);
* ``med|d|/max``, ``max|d|/max`` -- median and largest |bf16 - fp32|, as a
                   fraction of the largest |fp32 score| of the metric (what the
                   README's tolerance is stated in);
* ``med|d|/fl``, ``max|d|/fl`` -- the same differences divided by the bf16
                   run's numerical floor of that sample and metric
                   (``json.loads(run.samples.floor)``: the largest score that a
                   null ablation through the engine or a +-4 eps max|logit|
                   perturbation of the logits produces, eps of the model dtype).
                   scan zeroes scores within +-floor before the analysis, so a
                   ratio <= 1 means the bf16/fp32 difference is something the
                   analysis already treats as noise; a ratio > 1 means bf16
                   moves a score by more than the floor the run itself reports,
                   i.e. the floor understates bf16's error there.
                   The bf16-head rows use that run's own floor.

The scores are random-weight noise as far as meaning goes; only the agreement
between dtypes is measured. The script prints its measurements and asserts
nothing (tests/test_dtype.py checks the documented tolerance).

    .venv/bin/python analysis/precision.py                    # two built checkpoints, ~3 min on 2 CPU cores
    .venv/bin/python analysis/precision.py --model data/zoo/llava-l --data data/tasks/colour/test.jsonl --samples 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import horizon
from horizon.models import Adapter
from horizon.tiny import build_tiny, write_tiny_dataset

METRICS = ("dlogp", "dprob", "kl")
# bin edges as fractions of the largest |fp32 score| of a metric; labels read from large to small
BINS = ((0.1, np.inf, ">=10%"), (0.01, 0.1, "1-10%"), (0.001, 0.01, "0.1-1%"), (0.0, 0.001, "<0.1%"))
# Default stand-ins: wider/deeper than the test checkpoints (3 layers, hidden 64) so that
# many small, few large effects arise, yet a scan of a few samples takes seconds on 2 cores.
# image: pixel size that gives exactly that grid (LLaVA patch 8; Qwen patch 14, 2x2 merge).
BUILT = {
    "llava": dict(spec=dict(arch="llava", grid=(6, 6), layers=8, hidden=256, heads=8, kv_heads=4, seed=3),
                  image=(48, 48)),
    "qwen2_5_vl": dict(spec=dict(arch="qwen2_5_vl", grid=(4, 6), layers=8, hidden=256, heads=8, kv_heads=4, seed=3),
                       image=(112, 168)),
}
VOCAB = 2000
# Trained models' output heads are several times larger than the 0.02-std initialisation (the zoo's
# lm_head std is ~0.13), which makes logits of realistic size (tens) and the model confident in its
# answer; bf16 rounding of the logits scales with their size, so the built checkpoints get it too.
HEAD_SCALE = 8.0


def build(root: Path, name: str, spec: dict, head_scale: float = HEAD_SCALE, vocab: int = VOCAB) -> Path:
    """A build_tiny checkpoint with a ``vocab``-token BPE vocabulary and lm_head scaled by ``head_scale``."""
    from safetensors.torch import load_file, save_file

    from horizon.tiny import CORPUS

    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    # random words give BPE enough distinct merges for a vocabulary of a few thousand
    words = [" ".join("".join(rng.choice(letters, rng.integers(3, 9))) for _ in range(60)) for _ in range(200)]
    path = build_tiny(root / name, **spec, vocab=vocab, corpus=(*CORPUS, *words))
    weights = path / "model.safetensors"
    tensors = load_file(str(weights))
    (key,) = [k for k in tensors if k.endswith("lm_head.weight")]  # saved layouts differ by class
    tensors[key] = tensors[key] * head_scale
    save_file(tensors, str(weights), metadata={"format": "pt"})
    return path


def bf16_head(vlm: horizon.VisionLM) -> horizon.VisionLM:
    """The same loaded model with the pre-3ec94d6 head: final norm and lm_head in the model's dtype."""
    base = type(vlm.adapter)

    class ModelDtypeHead(base):  # type: ignore[valid-type, misc]
        def scored_logits(self, language_model: torch.nn.Module, lm_head: torch.nn.Module,
                          hidden: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
            # what the engine did before: logits rounded to the model dtype, then upcast (exactly)
            return lm_head(language_model.norm(hidden)).float()

    return horizon.VisionLM(hf=vlm.hf, nn=vlm.nn, processor=vlm.processor, adapter=ModelDtypeHead(), source=vlm.source)


def scan_frame(vlm: horizon.VisionLM, data: Path, group: int, samples: int, target: str) -> pd.DataFrame:
    """Scores of one scan with each score's sample floor and scored answer tokens attached.

    Columns sample_id, layer, group, metric, value, floor, answer (the scored token ids, as text), clean_logp.
    """
    run = horizon.scan(vlm, data, metrics=METRICS, group=group, limit=samples, target=target, progress=False)
    info = run.samples.assign(answer=[str(list(ids)[off:]) for ids, off in
                                      zip(run.samples.answer_ids, run.samples.scored_offset)])
    floors = [(sid, m, f, a, lp) for sid, fl, a, lp in zip(info.sample_id, info.floor, info.answer, info.clean_logp)
              for m, f in json.loads(fl).items()]
    floor = pd.DataFrame(floors, columns=["sample_id", "metric", "floor", "answer", "clean_logp"])
    return run.scores.merge(floor, on=["sample_id", "metric"], how="left")


def same_answers(*frames: pd.DataFrame) -> list[pd.DataFrame]:
    """Keep the samples whose scored answer tokens are the same in every scan.

    With ``--target pred`` each dtype scores its own greedy answer; where bf16
    answers differently the scores measure different things and are not compared.
    """
    first, *rest = [f.groupby("sample_id").answer.first().to_dict() for f in frames]
    keep = {s for s, a in first.items() if all(r.get(s) == a for r in rest)}
    return [f[f.sample_id.isin(keep)] for f in frames]


def agreement(ref: pd.DataFrame, got: pd.DataFrame) -> pd.DataFrame:
    """Per metric and effect-size bin: n, Pearson/Spearman r, |got - ref| relative to max|ref| and to got's floor."""
    key = ["sample_id", "layer", "group", "metric"]
    both = ref.merge(got, on=key, suffixes=("_ref", "_got"), validate="one_to_one")
    if len(both) != len(ref) or len(both) != len(got):
        raise RuntimeError("the two scans did not score the same (sample, layer, group) cells")
    rows = []
    for metric, part in both.groupby("metric", sort=False):
        x = part.value_ref.to_numpy(np.float64)
        y = part.value_got.to_numpy(np.float64)
        floor = part.floor_got.to_numpy(np.float64)
        top = np.abs(x).max()
        size = np.abs(x) / top if top > 0 else np.zeros_like(x)
        diff = np.abs(y - x)
        for lo, hi, label in ((0.0, np.inf, "all"), *BINS):
            sel = (size >= lo) & (size < hi)
            row = dict(metric=metric, bin=label, n=int(sel.sum()))
            if sel.sum() >= 3 and x[sel].std() > 0 and y[sel].std() > 0:
                row["pearson"] = float(np.corrcoef(x[sel], y[sel])[0, 1])
                row["spearman"] = float(pd.Series(x[sel]).corr(pd.Series(y[sel]), method="spearman"))
            if sel.any():
                row["med|d|/max"] = float(np.median(diff[sel]) / top)
                row["max|d|/max"] = float(diff[sel].max() / top)
                ratio = diff[sel] / np.where(floor[sel] > 0, floor[sel], np.nan)
                row["med|d|/fl"] = float(np.nanmedian(ratio)) if np.isfinite(ratio).any() else np.nan
                row["max|d|/fl"] = float(np.nanmax(ratio)) if np.isfinite(ratio).any() else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


def measure(name: str, path: Path, data: Path, group: int, samples: int, target: str) -> pd.DataFrame:
    """Scan ``path`` in fp32, bf16 and bf16 with the old head; print a summary; return the agreement table."""
    t0 = time.perf_counter()
    ref = scan_frame(horizon.load(path, dtype="float32", device="cpu"), data, group, samples, target)
    t1 = time.perf_counter()
    bf16 = horizon.load(path, dtype="bfloat16", device="cpu")
    new = scan_frame(bf16, data, group, samples, target)
    t2 = time.perf_counter()
    old = scan_frame(bf16_head(bf16), data, group, samples, target)
    t3 = time.perf_counter()
    n_scanned = ref.sample_id.nunique()
    ref, new, old = same_answers(ref, new, old)
    if ref.empty:
        raise SystemExit(f"{name}: bf16 answered every sample differently from fp32; nothing to compare")
    cfg = bf16.hf.config.get_text_config()
    floors = {m: (ref[ref.metric == m].floor.median(), new[new.metric == m].floor.median(),
                  old[old.metric == m].floor.median()) for m in METRICS}
    print(f"\n== {name}: {path}  ({cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}; "
          f"{ref.sample_id.nunique()} of {n_scanned} samples (same answer tokens in all three scans), {len(ref) // len(METRICS)} (sample, layer, group) cells per metric; "
          f"scans fp32 {t1 - t0:.0f} s, bf16 {t2 - t1:.0f} s, bf16-head {t3 - t2:.0f} s)")
    print("   largest |fp32 score|: " + ", ".join(f"{m} {ref[ref.metric == m].value.abs().max():.3g}" for m in METRICS)
          + f"; clean log p(answer), median over samples: {ref.groupby('sample_id').clean_logp.first().median():.3g}")
    print("   median sample floor fp32 / bf16 / bf16-head: "
          + "; ".join(f"{m} {a:.2g} / {b:.2g} / {c:.2g}" for m, (a, b, c) in floors.items()))
    out = []
    for engine, got in (("bf16", new), ("bf16-head", old)):
        table = agreement(ref, got)
        table.insert(0, "engine", engine)
        table.insert(0, "model", name)
        out.append(table)
    return pd.concat(out, ignore_index=True)


def show(table: pd.DataFrame) -> None:
    """Per metric, the two engines' rows side by side, bins from large to small."""
    fmt = {"pearson": "{:.3f}", "spearman": "{:.3f}", "med|d|/max": "{:.1e}", "max|d|/max": "{:.1e}",
           "med|d|/fl": "{:.2g}", "max|d|/fl": "{:.2g}"}
    cols = ["n", *fmt]
    for metric in METRICS:
        part = table[table.metric == metric]
        wide = part.pivot_table(index="bin", columns="engine", values=cols, aggfunc="first", sort=False)
        lines = [f"   {metric:6s} {'bin':>7s} | {'n':>5s} | " + " | ".join(f"{c:>21s}" for c in fmt),
                 f"   {'':6s} {'':>7s} | {'':>5s} | " + " | ".join(f"{'bf16':>10s} {'bf16-head':>10s}" for _ in fmt)]
        for label in ["all", *(b[2] for b in BINS)]:
            if label not in wide.index:
                continue
            r = wide.loc[label]
            cells = []
            for c, f in fmt.items():
                pair = []
                for engine in ("bf16", "bf16-head"):
                    v = r.get((c, engine), np.nan)
                    pair.append(f.format(v) if pd.notna(v) else "-")
                cells.append(f"{pair[0]:>10s} {pair[1]:>10s}")
            lines.append(f"   {'':6s} {label:>7s} | {int(r[('n', 'bf16')]):5d} | " + " | ".join(cells))
        print("\n".join(lines))


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", type=Path, help="local checkpoint to measure (repeatable); "
                    "default: two random-weight checkpoints built here")
    ap.add_argument("--data", type=Path, help="horizon JSONL (the README's Dataset file section) for --model "
                    "(default: random-noise images)")
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--group", type=int, default=2, help="window size k")
    ap.add_argument("--target", choices=("pred", "gt"), default="pred",
                    help="score the model's own greedy answer (default: a confident answer, as real models give) "
                         "or the dataset's answer")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    tables = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.model:
            jobs = [(p.name, p, args.data or write_tiny_dataset(root / f"data{i}", n=args.samples, size=(224, 224)))
                    for i, p in enumerate(args.model)]
        else:
            jobs = []
            for name, spec in BUILT.items():
                path = build(root, name, spec["spec"])
                jobs.append((name, path, write_tiny_dataset(root / f"data-{name}", n=args.samples, size=spec["image"])))
        for name, path, data in jobs:
            tables.append(measure(name, path, data, args.group, args.samples, args.target))
            show(tables[-1])
    print(f"\nbf16: bf16 decoder layers, float32 final norm + lm_head (the engine now); bf16-head: the same with the "
          f"final norm + lm_head in bf16 (the engine before 3ec94d6). Bins: |fp32 score| / largest |fp32 score| of the "
          f"metric. /max: relative to that largest score; /fl: relative to the bf16 run's per-sample numerical floor.")
    print(f"elapsed {time.perf_counter() - start:.0f} s")
    return pd.concat(tables, ignore_index=True)


if __name__ == "__main__":
    main()
