"""`scan`: per-layer, per-group information of visual tokens, as tidy frames.

For every sample: build the prompt, append the target answer (teacher
forcing), run the clean pass once, tile the image grids into k x k groups,
then score every (layer, group) ablation with the engine.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import __version__
from .ablation import (Ablation, auto_batch_size, clean_pass, ensure_maskable_attention, plan_batches, reuse_start,
                       run_ablations)
from .data import Sample, as_samples
from .decoding import DECODING_RULES, Decoding
from .errors import HorizonError, SampleError
from .estimators import ESTIMATORS, KEEP_TOKENS, KL_TOKENS, estimate_keep, estimate_remove, gate_gradients
from .groups import Group, ImageGrid, tile
from .models import VisionLM, load, refuse_extra_images
from .options import check_out_folder, check_run_options
from .scores import DEFAULT_METRICS, RAW_METRICS, check_metrics, keep_scores, remove_scores
from .io.runs import (GROUP_COLUMNS, SAMPLE_COLUMNS, SCORE_COLUMNS, RunStore, Shard, read_config,
                      read_table, with_image_column)

log = logging.getLogger("horizon")


@dataclass
class ScanConfig:
    """What to measure. Defaults follow the README's sections What is measured and Dataset file."""

    layers: str | Sequence[int] = "all"
    group: int = 2
    protocol: str = "remove"  # remove | keep
    metrics: tuple[str, ...] | None = None  # None: the protocol's defaults
    target: str = "gt"  # gt | pred
    answer_span: str = "first"  # first | full
    batch_size: int | None = None  # None: chosen from the memory budget
    seed: int = 0
    limit: int | None = None
    on_error: str = "stop"  # stop | skip
    reuse_prefix: bool = True
    max_new_tokens: int = 16
    decoding: str = "checkpoint"  # checkpoint | greedy (horizon.decoding)
    shard: str | Shard | None = None  # "i/n": every n-th sample from the i-th (horizon.io.runs.Shard)
    estimator: str = "exact"  # exact | gradient (horizon.estimators): measured removal or its gradient estimate
    kl_tokens: int = KL_TOKENS  # gradient estimator: tokens of KL's second-order estimate
    hybrid_margin: int = 1  # hybrid: scanned layers on each side of the estimated horizon measured exactly
    hybrid_top: float = 0.10  # hybrid: share of each layer's groups (the top by the estimate) measured exactly
    # gradient and hybrid: each layer's softmax recomputed exactly without the group (AtP*), not linearised
    saturation_fix: bool = True

    def validate(self) -> None:
        self.metrics = check_metrics(self.protocol, self.metrics or DEFAULT_METRICS.get(self.protocol, ()))
        choices = {"target": ("gt", "pred"), "answer_span": ("first", "full"), "on_error": ("stop", "skip"),
                   "decoding": DECODING_RULES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise HorizonError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.group < 1:
            raise HorizonError(f"--group must be a positive window size, got {self.group}")
        if self.batch_size is not None and self.batch_size < 1:
            raise HorizonError(f"--batch-size must be positive, got {self.batch_size}")
        check_run_options(limit=self.limit, seed=self.seed, max_new_tokens=self.max_new_tokens)
        if isinstance(self.shard, str):
            self.shard = Shard.parse(self.shard)
        if self.estimator not in ESTIMATORS:
            raise HorizonError(f"--estimator must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")
        if self.estimator in ("gradient", "hybrid"):
            if self.protocol == "keep" and not self.saturation_fix:
                raise HorizonError("--no-saturation-fix: the keep protocol's estimate has one form (each layer's "
                                   "softmax with the group back computed exactly); leave the option out")
            if self.kl_tokens < 1:
                raise HorizonError(f"--kl-tokens must be positive, got {self.kl_tokens}")


def distributed_shard(environ: Mapping[str, str] = os.environ) -> Shard | None:
    """This process's shard under ``torchrun`` (or any launcher that sets torch.distributed's RANK and
    WORLD_SIZE): rank r of w scans every w-th sample from the r-th. None outside such a launch."""
    try:
        world, rank = int(environ.get("WORLD_SIZE", "1")), int(environ.get("RANK", "0"))
    except ValueError:
        raise HorizonError(f"torch.distributed environment: RANK={environ.get('RANK')!r}, "
                           f"WORLD_SIZE={environ.get('WORLD_SIZE')!r} are not integers") from None
    return Shard(rank, world) if world > 1 else None


def combined_shard(explicit: Shard | None, ranks: Shard | None) -> Shard:
    """``--shard i/n`` split further over the ranks of a launch: shard i*w + r of n*w (w ranks, rank r)."""
    explicit, ranks = explicit or Shard(), ranks or Shard()
    return Shard(explicit.index * ranks.count + ranks.index, explicit.count * ranks.count)


class ScanResult:
    """The tidy frames a scan produces (the same tables the run directory holds).

    For a scan written to a run directory the frames are read from it when
    first asked for (a study's scores need not fit in memory until then), and
    they cover every shard's committed samples.
    """

    def __init__(self, samples: pd.DataFrame | None = None, groups: pd.DataFrame | None = None,
                 scores: pd.DataFrame | None = None, config: dict[str, Any] | None = None,
                 run_dir: Path | None = None):
        self._frames = {"samples": samples, "groups": groups, "scores": scores}
        self.config = config or {}
        self.run_dir = run_dir

    def _frame(self, name: str) -> pd.DataFrame:
        if self._frames[name] is None:
            if self.run_dir is None:
                raise AttributeError(name)
            frame = read_table(self.run_dir, name)
            self._frames[name] = with_image_column(frame) if name == "groups" else frame
        return self._frames[name]

    @property
    def samples(self) -> pd.DataFrame:
        return self._frame("samples")

    @property
    def groups(self) -> pd.DataFrame:
        return self._frame("groups")

    @property
    def scores(self) -> pd.DataFrame:
        return self._frame("scores")


def parse_layers(spec: str | int | Sequence[int], n_layers: int) -> list[int]:
    """`all`, `0,4,8` or `start:stop[:step]` (Python slice of 0..L-1)."""
    if isinstance(spec, int):
        layers = [spec]
    elif isinstance(spec, str):
        text = spec.strip()
        try:
            if text == "all":
                layers = list(range(n_layers))
            elif ":" in text:
                parts = [int(p) if p.strip() else None for p in text.split(":")]
                if len(parts) > 3:
                    raise ValueError
                start, stop, step = (parts + [None, None])[:3]
                if (start is not None and start < 0) or (stop is not None and stop < 0) or (step is not None and step <= 0):
                    raise ValueError
                stop = n_layers if stop is None else stop
                if stop > n_layers:
                    raise HorizonError(f"--layers {spec}: stop {stop} is past the model's {n_layers} decoder layers (0..{n_layers - 1})")
                layers = list(range(start or 0, stop, step or 1))
            else:
                layers = [int(p) for p in text.split(",") if p.strip()]
        except ValueError:
            raise HorizonError(f"--layers {spec!r}: expected all, a list like 0,4,8 or a range like 0:32:2") from None
    else:
        layers = [int(x) for x in spec]
    if not layers:
        raise HorizonError(f"--layers {spec!r} selects no layer")
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad:
        raise HorizonError(f"layer {bad[0]} out of range: the model has {n_layers} decoder layers (0..{n_layers - 1})")
    return sorted(set(layers))


def encode_sample(vlm: VisionLM, sample: Sample) -> tuple[dict[str, torch.Tensor], str]:
    """Model inputs and prompt text of a sample: one image placeholder per image, every image loaded.

    scan and prune-eval prepare every sample here, so a sample that cannot be
    prepared is a SampleError (recorded under ``--on-error skip``): images
    that cannot be read (:meth:`Sample.load_images`), and what processors and
    tokenizers raise for inputs they reject -- ValueError (Qwen's image
    processor for an aspect ratio above 200, UnicodeError), OSError and
    horizon's own HorizonError. Other exceptions are bugs and propagate.
    """
    images = sample.load_images()
    try:
        prompt = vlm.adapter.prompt(vlm.processor, sample.question, len(images))
        inputs = vlm.adapter.encode(vlm.processor, images, prompt)
    except SampleError:
        raise
    except (ValueError, OSError, HorizonError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise SampleError(sample.id, f"the processor rejected it ({type(exc).__name__}: {message})") from None
    check_context(vlm, sample, inputs["input_ids"], "prompt")
    return inputs, prompt


def check_context(vlm: VisionLM, sample: Sample, input_ids: torch.Tensor, what: str, new_tokens: int = 0) -> None:
    """Refuse a sample whose ``what`` (its tokens ``input_ids``, visual ones included), with room for
    ``new_tokens`` generated after it, is longer than the positions the language model was built for: past
    them its outputs mean nothing, and nothing else says so."""
    limit, n = vlm.max_positions, int(input_ids.shape[-1])
    if limit is not None and n + new_tokens > limit:
        visual = int((input_ids == vlm.adapter.image_token_id(vlm.hf)).sum())
        more = f" and its answer may take {new_tokens} more (--max-new-tokens)" if new_tokens else ""
        fix = "lower --max-new-tokens, shorten the question" if new_tokens else "shorten the question"
        raise SampleError(sample.id, f"{what} is {n} tokens ({visual} of them image tokens){more}, longer than the "
                                     f"model's {limit} positions (max_position_embeddings); {fix} or use smaller "
                                     "images")


def image_records(vlm: VisionLM, sample: Sample, grids: list[ImageGrid]) -> list[dict[str, Any]]:
    """Per image: path, original size [W, H], its token grids and the view rectangle each spans.

    ``grid`` and ``view`` are the image's first grid's (the only one for most
    families); ``grids`` lists every grid of the image with its ``level`` and
    its index among the sample's grids (the groups table's ``grid`` column).
    """
    owners = [i if g.image is None else g.image for i, g in enumerate(grids)]
    if sorted(set(owners)) != list(range(len(sample.images))):
        raise SampleError(sample.id, f"{len(sample.images)} images but the prompt's image grids belong to "
                                     f"{len(set(owners))} images")
    records = []
    for image, path in enumerate(sample.images):
        size = sample.image_size(path)
        mine = [(i, g) for i, g in enumerate(grids) if owners[i] == image]
        views = vlm.adapter.grid_views(vlm.processor, size, [g for _, g in mine])
        entries = [{"grid": [g.height, g.width], "view": [float(v) for v in view], "level": g.level, "index": i}
                   for (i, g), view in zip(mine, views)]
        records.append({"path": str(path), "size": list(size), "grid": entries[0]["grid"],
                        "view": entries[0]["view"], "grids": entries})
    return records


def answer_ids_for(vlm: VisionLM, sample: Sample, prompt: str) -> list[int]:
    """The ground-truth answer's tokens as they follow the prompt."""
    tok, sep = vlm.tokenizer, vlm.adapter.answer_separator
    prefix = tok(prompt, add_special_tokens=False).input_ids
    full = tok(prompt + sep + sample.answer, add_special_tokens=False).input_ids
    ids = full[len(prefix):] if full[: len(prefix)] == prefix else tok(sep + sample.answer, add_special_tokens=False).input_ids
    if not sample.answer.strip():
        raise SampleError(sample.id, f"answer {sample.answer!r} is empty or only whitespace: no text to score")
    if not ids:
        raise SampleError(sample.id, f"answer {sample.answer!r} tokenizes to nothing")
    return ids


@torch.no_grad()
def greedy_answer(vlm: VisionLM, inputs: dict[str, torch.Tensor], max_new_tokens: int,
                  decoding: str | Decoding = "checkpoint") -> list[int]:
    """The model's answer tokens (eos excluded) under ``decoding``: the loop prune-eval uses, with nothing pruned."""
    from .prune.generate import generate  # prune builds on scan; the import goes the other way only here
    from .prune.schedule import Schedule

    return generate(vlm, inputs, Schedule(()), max_new_tokens=max_new_tokens, decoding=decoding).tokens


def first_text_token(tokenizer: Any, ids: Sequence[int]) -> int | None:
    """Index in ``ids`` of the first token that carries answer text, or None.

    A token carries text when the answer decoded up to and including it is
    more than whitespace. Tokenizers put a word boundary before the answer in
    their own way: Llama's SentencePiece splits `` 2`` into ``'▁'`` and
    ``'2'`` (digits never merge with the boundary), so every number answer
    starts with the same bare ``'▁'``, whose probability says nothing about
    the answer. Decoding the prefix (rather than reading one token's string)
    also handles byte-level pieces of one character split over tokens.
    """
    for k in range(len(ids)):
        if tokenizer.decode(list(ids[: k + 1]), skip_special_tokens=True).strip():
            return k
    return None


ESTIMATOR_METHOD = ("gradient (attribution patching): dlogp = sum over layers >= l and the group's keys of d log p(y) / "
                    "d log(attention gate) at the clean point; dprob = p(y) * that; kl = second order, 1/2 sum over "
                    "the {k} most probable tokens of p_v (first-order change of log p_v)^2 (the Fisher form, without "
                    "the saturation fix). Estimates, not measured removals; no numerical floor is measured")
SATURATION_METHOD = ("saturation fix (AtP*-style): each layer's attention output without the group is recomputed exactly "
                     "((m o - u) / (1 - m) per query and head, m the query's attention mass on the group, u its "
                     "share of the output) and only its effect on the answer is linearised, instead of linearising "
                     "the softmax too (which misses queries that attend almost only to the group); the change is "
                     "carried linearly to the logits of the answer and of the max(kl_tokens, 8) most probable "
                     "tokens, and dlogp, dprob and kl are read off the output softmax of those moved logits, the "
                     "other tokens moved by their first-order mean (kl is then KL(p || q) of that distribution, not "
                     "the Fisher form)")
HYBRID_METHOD = ("the gradient estimate everywhere, then the exact engine for every group of the scanned layers within "
                 "`margin` of the sample's estimated horizon and the `top` share of groups per layer by the estimate; "
                 "the horizon is then re-read with the measured scores in place of the estimates and the layers "
                 "within `margin` of it measured too, until it holds still; the scores' `exact` column says which "
                 "rows were measured; the floor is measured on those layers")
SCORED_TOKEN_RULE = ("the first answer token whose text is not only whitespace (leading word-boundary tokens such as "
                     "Llama's bare '▁' before a digit are fed but not scored); --answer-span full scores it and every "
                     "later answer token")


def append_answer(inputs: dict[str, torch.Tensor], ids: list[int]) -> dict[str, torch.Tensor]:
    extra = torch.tensor([ids], dtype=inputs["input_ids"].dtype)
    out = dict(inputs)
    out["input_ids"] = torch.cat([inputs["input_ids"], extra], dim=1)
    out["attention_mask"] = torch.ones_like(out["input_ids"])
    for name in ("mm_token_type_ids", "token_type_ids"):  # per-token types (M-RoPE, image blocks): answers are text
        if name in inputs:
            out[name] = torch.cat([inputs[name], torch.zeros_like(extra)], dim=1)
    return out


def _ablations(groups: list[Group], visual: list[int], layers: list[int], protocol: str) -> list[Ablation]:
    if protocol == "remove":
        return [Ablation(l, g.positions) for l in layers for g in groups]
    everything = set(visual)
    return [Ablation(l, tuple(sorted(everything - set(g.positions)))) for l in layers for g in groups]


def null_ablations(visual: list[int], layers: list[int], protocol: str) -> list[Ablation]:
    """Per layer, an ablation that changes nothing, computed like the real ones (the numerical floor).

    ``remove``: remove nothing, recomputing from the first visual position as a
    real removal does. ``keep``: keep no visual token, which is the baseline
    itself; run in a batch of keep rows its score against the baseline is pure
    rounding.
    """
    if protocol == "remove":
        return [Ablation(l, (), start=min(visual)) for l in layers]
    return [Ablation(l, tuple(sorted(visual))) for l in layers]


# Rounding of the model's logits, in units of eps * max|logit| (eps: machine epsilon of the model's
# dtype). Against a float64 reference the zoo models' float32 logits are off by up to about 4 units in
# the last place of the largest logit, which is at most 4 * eps * max|logit|.
ROUNDING_UNITS = 4.0
ROUNDING_DRAWS = 2


def rounding_shift(reference: torch.Tensor, ablated: torch.Tensor, score, width: float, generator: torch.Generator,
                   draws: int = ROUNDING_DRAWS) -> dict[str, torch.Tensor]:
    """How far rounding of the logits alone can move each score: |score(ref', abl') - score(ref, abl)|.

    ``reference`` (m, V) and ``ablated`` (B, m, V) are log-probabilities; each
    draw moves every logit of both by independent uniform noise of +-``width``
    and renormalises. ``score(ref, abl)`` -> metric -> (B,). Returns metric ->
    (B,), the largest shift over the draws.
    """
    def moved(x: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(x.shape, generator=generator, dtype=torch.float64, device=generator.device)
        return torch.log_softmax(x + (noise.to(x.device) * 2 - 1) * width, dim=-1)

    base = score(reference, ablated)
    shift = {m: torch.zeros_like(v) for m, v in base.items()}
    for _ in range(draws):
        for m, v in score(moved(reference), moved(ablated)).items():
            shift[m] = torch.maximum(shift[m], (v - base[m]).abs())
    return shift


def floor_of(*score_sets: Mapping[str, np.ndarray]) -> dict[str, float]:
    """A sample's numerical floor per metric: the largest |value| over the given sets
    (null-ablation scores, rounding shifts)."""
    floor: dict[str, float] = {}
    for scores in score_sets:
        for m, v in scores.items():
            if m not in RAW_METRICS and len(v):
                floor[m] = max(floor.get(m, 0.0), float(np.abs(np.asarray(v, dtype=np.float64)).max()))
    return floor


def scan_sample(vlm: VisionLM, sample: Sample, cfg: ScanConfig, layers: list[int], on_batch=None):
    """Scan one sample; returns (sample row, groups frame, scores frame).

    ``on_batch(fraction)`` is called after every batch with the fraction of
    the sample's batches done so far (exactly 1.0 after the last).
    """
    if sample.problem:
        raise SampleError(sample.id, sample.problem)
    prompt_inputs, prompt = encode_sample(vlm, sample)
    generated = greedy_answer(vlm, prompt_inputs, cfg.max_new_tokens, cfg.decoding)
    answer_ids = answer_ids_for(vlm, sample, prompt) if cfg.target == "gt" else generated
    first = first_text_token(vlm.tokenizer, answer_ids)
    if first is None:
        which = f"answer {sample.answer!r}" if cfg.target == "gt" else f"model's answer {vlm.tokenizer.decode(generated)!r}"
        raise SampleError(sample.id, f"the {which} has no token carrying text to score")
    if cfg.answer_span == "first":
        answer_ids = answer_ids[: first + 1]  # the whitespace-only tokens before it are fed, not scored
    inputs = append_answer(prompt_inputs, answer_ids)
    check_context(vlm, sample, inputs["input_ids"], "prompt with its answer")
    start = prompt_inputs["input_ids"].shape[1]
    # position i predicts the token at i + 1: answer token j is predicted at start - 1 + j
    scored = list(range(start - 1 + first, start - 1 + len(answer_ids)))

    grids = vlm.adapter.grids(vlm.hf, inputs)
    if not grids:
        raise SampleError(sample.id, "the prompt holds no image tokens")
    images = image_records(vlm, sample, grids)
    groups = tile(grids, cfg.group)
    visual = [p for g in groups for p in g.positions]
    clean = clean_pass(vlm, inputs, scored)
    target = torch.tensor(answer_ids[first:], device=clean.scored_logits.device)  # where the head put the logits
    logp = clean.scored_logprobs()
    estimated = None  # (estimates, which rows are measured exactly) for the gradient and hybrid estimators
    if cfg.estimator in ("gradient", "hybrid"):
        # one forward and backward pass (plus one backward per KL token) instead of one pass per ablation
        if cfg.protocol == "keep":  # one forward pass per scanned layer (its base point), backward passes each
            estimate = estimate_keep(vlm, clean, target, groups, layers, cfg.metrics, KEEP_TOKENS)
        else:
            grads = gate_gradients(vlm, clean, target, cfg.kl_tokens if "kl" in cfg.metrics else 0,
                                   groups if cfg.saturation_fix else None)
            estimate = estimate_remove(grads, groups, layers, cfg.metrics)
        estimates = {m: v.float().numpy() for m, v in estimate.items()}
        deciding = next((m for m in ("dlogp", "gain_logp") if m in estimates), next(iter(estimates)))
        measured = (hybrid_plan(estimates[deciding].reshape(len(layers), len(groups)), cfg.hybrid_margin,
                                cfg.hybrid_top).flatten() if cfg.estimator == "hybrid"
                    else np.zeros(len(layers) * len(groups), dtype=bool))
        estimated = (estimates, measured)
        if not measured.any():
            if on_batch:
                on_batch(1.0)
            return _sample_tables(vlm, sample, cfg, layers, groups, visual, estimates, len(measured), {}, inputs,
                                  answer_ids, first, grids, logp, target, generated, images, measured)
    all_real = _ablations(groups, visual, layers, cfg.protocol)
    batch_size = cfg.batch_size or auto_batch_size(vlm, clean)
    none = {}
    if cfg.protocol == "keep":
        baseline = [Ablation(l, tuple(visual)) for l in layers]
        for idx, logq in run_ablations(vlm, clean, baseline, batch_size, cfg.reuse_prefix):
            none.update({baseline[i].layer: logq[j] for j, i in enumerate(idx)})
    # the floor: null ablations through the engine, and how far rounding of the logits could move each score
    generator = torch.Generator(device=vlm.device).manual_seed(cfg.seed)
    width = ROUNDING_UNITS * torch.finfo(vlm.dtype).eps * float(clean.logits[0, scored].float().abs().max())
    progress = _BatchFraction(on_batch, 1 if cfg.protocol == "keep" else 0)

    def measure(real: list[Ablation], null_layers: list[int]):
        """The engine's scores of ``real`` and of the null ablations of ``null_layers``, which ride in the same
        batches so they see the same arithmetic; and the rounding shifts of all of them."""
        ablations = real + null_ablations(visual, null_layers, cfg.protocol)
        planned = plan_batches(ablations, batch_size, clean.seq_len, reuse_start=reuse_start(vlm, clean))
        progress.planned(len(planned))
        values = {m: np.zeros(len(ablations), dtype=np.float32) for m in cfg.metrics}
        shifts = {m: np.zeros(len(ablations)) for m in cfg.metrics}
        for idx, logq in run_ablations(vlm, clean, ablations, batch_size, cfg.reuse_prefix):
            if cfg.protocol == "remove":
                reference, score = logp, (lambda ref, q: remove_scores(ref, q, target, cfg.metrics))
            else:
                reference = none[ablations[idx[0]].layer]
                score = (lambda ref, q: keep_scores(ref, q, target, cfg.metrics))
            for metric, v in score(reference, logq).items():
                values[metric][idx] = v.float().cpu().numpy()
            for metric, v in rounding_shift(reference, logq, score, width, generator).items():
                shifts[metric][idx] = v.cpu().numpy()
            progress.batch_done()
        n = len(real)
        return {m: v[:n] for m, v in values.items()}, {m: v[n:] for m, v in values.items()}, shifts

    if estimated is None:
        values, nulls, shifts = measure(all_real, layers)
        progress.finish()
        return _sample_tables(vlm, sample, cfg, layers, groups, visual, values, len(all_real), floor_of(nulls, shifts),
                              inputs, answer_ids, first, grids, logp, target, generated, images)
    # hybrid: only what decides the result is measured (and the floor of the layers measured), in rounds
    estimates, measured = estimated
    combined = {m: estimates[m].copy() for m in cfg.metrics}
    floors = []

    def measure_cells(todo: np.ndarray) -> np.ndarray:
        chosen = np.flatnonzero(todo.flatten())
        values, nulls, shifts = measure([all_real[i] for i in chosen],
                                        [layers[i] for i in np.flatnonzero(todo.any(1))])
        for m in cfg.metrics:
            combined[m][chosen] = values[m]  # the engine's own values, untouched
        floors.extend([nulls, shifts])
        return values[deciding]

    shape = (len(layers), len(groups))
    _, done = hybrid_rounds(estimates[deciding].reshape(shape), measured.reshape(shape), cfg.hybrid_margin,
                            measure_cells)
    progress.finish()
    return _sample_tables(vlm, sample, cfg, layers, groups, visual, combined, len(all_real), floor_of(*floors),
                          inputs, answer_ids, first, grids, logp, target, generated, images, done.flatten())


class _BatchFraction:
    """A sample's fraction of batches done, for ``on_batch``: batches are planned round by round (hybrid), so
    the fraction is of those planned so far, held below 1 until ``finish`` reports exactly 1.0. ``done``
    batches ran before the first plan (the keep protocol's baselines); they are reported once it is known
    what they are a fraction of."""

    def __init__(self, on_batch, done: int):
        self.on_batch, self.done, self.total, self.pending = on_batch, done, done, done > 0

    def planned(self, n: int) -> None:
        self.total += n
        if self.pending:
            self.pending = False
            self._report()

    def batch_done(self) -> None:
        self.done += 1
        self._report()

    def _report(self) -> None:
        if self.on_batch and self.done < self.total:
            self.on_batch(self.done / self.total)

    def finish(self) -> None:
        if self.on_batch:
            self.on_batch(1.0)


def hybrid_band(values: np.ndarray, margin: int) -> np.ndarray:
    """The (layer, group) cells of every group in the scanned layers within ``margin`` of the sample's horizon
    by ``values`` (scanned layers x groups): the first scanned layer from which the mean of the values'
    positive part over groups stays at or below 5% of its largest value; past the last layer when it never
    does, so the last ``margin`` layers are in the band."""
    n_layers = values.shape[0]
    curve = np.clip(values, 0.0, None).mean(1)
    vanished = curve <= 0.05 * curve.max()
    horizon = next((i for i in range(n_layers) if vanished[i:].all()), n_layers)
    band = np.zeros(values.shape, dtype=bool)
    band[max(0, horizon - margin): min(n_layers, horizon + margin + 1)] = True
    return band


def hybrid_rounds(estimate: np.ndarray, first: np.ndarray, margin: int,
                  measure: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The hybrid estimator's exact part: measure the cells ``first`` marks (:func:`hybrid_plan`), then, round by
    round, every cell of the band around the horizon of the scores so far (:func:`hybrid_band`: measured
    scores in place of the estimates) not measured yet, until a round adds nothing. ``measure(cells)`` gets a
    (layers x groups) mask and returns the measured scores of its cells in row-major order. Returns the scores (measured where measured, estimated elsewhere) and the mask of
    what was measured."""
    values = estimate.copy()
    done = np.zeros(estimate.shape, dtype=bool)
    plan = first.copy()
    while (plan & ~done).any():
        todo = plan & ~done
        values[todo] = measure(todo)
        done |= todo
        plan = done | hybrid_band(values, margin)
    return values, done


def hybrid_plan(estimate: np.ndarray, margin: int, top_share: float) -> np.ndarray:
    """Which (layer, group) of ``estimate`` (scanned layers x groups) the hybrid estimator measures exactly first:
    every group of the layers in :func:`hybrid_band` of the estimate, and in every layer the top ``top_share``
    of groups by the estimate. What the measured cells reveal adds more, in :func:`hybrid_rounds`: where the
    measured layers move the horizon, the band follows it.
    """
    n_layers, n_groups = estimate.shape
    measured = hybrid_band(estimate, margin)
    k = min(n_groups, max(1, math.ceil(top_share * n_groups))) if top_share > 0 else 0
    if k:
        top = np.argsort(-estimate, axis=1, kind="stable")[:, :k]
        measured[np.arange(n_layers)[:, None], top] = True
    return measured


def _sample_tables(vlm, sample, cfg, layers, groups, visual, values, n_real, floor, inputs, answer_ids, first, grids,
                   logp, target, generated, images, measured=None):
    """A scanned sample's row, groups frame and scores frame (with ``measured``: an ``exact`` column saying which
    scores the engine measured and which are estimates)."""
    n_groups = len(groups)
    scores = pd.concat(
        [
            pd.DataFrame({
                "sample_id": sample.id,
                "layer": np.repeat(np.asarray(layers, dtype=np.int64), n_groups),
                "group": np.tile(np.arange(n_groups, dtype=np.int64), len(layers)),
                "metric": metric,
                "value": values[metric][:n_real],
                **({} if measured is None else {"exact": measured}),
            })
            for metric in cfg.metrics
        ],
        ignore_index=True,
    )
    group_frame = pd.DataFrame({
        "sample_id": sample.id,
        "group": [g.index for g in groups],
        "row": [g.row for g in groups],
        "col": [g.col for g in groups],
        "positions": [list(g.positions) for g in groups],
        "image": np.asarray([g.image for g in groups], dtype=np.int64),
        "grid": np.asarray([g.grid for g in groups], dtype=np.int64),
    })
    row = {
        "sample_id": sample.id, "task": sample.task, "question": sample.question, "answer": sample.answer,
        "input_ids": inputs["input_ids"][0].tolist(), "answer_ids": list(answer_ids), "scored_offset": first,
        "scored_text": vlm.tokenizer.decode(answer_ids[first:], skip_special_tokens=True), "image": str(sample.image),
        "n_visual": len(visual), "grid_h": grids[0].height, "grid_w": grids[0].width,
        "clean_logp": float(logp.gather(-1, target[:, None]).sum()),
        "clean_pred": vlm.tokenizer.decode(generated, skip_special_tokens=True).strip(),
        "status": "ok",
        "floor": json.dumps(floor),
        "images": json.dumps(images),
    }
    return row, group_frame, scores


def run_config(vlm: VisionLM, cfg: ScanConfig, layers: list[int], data: str | None) -> dict[str, Any]:
    import nnsight
    import transformers

    return {
        "horizon_version": __version__,
        **vlm.model_keys,  # a resume must use the same checkpoint files, however the path is typed
        "adapter": vlm.adapter.name,
        "architecture": type(vlm.hf).__name__,
        "n_layers": vlm.n_layers,
        "dtype": str(vlm.dtype).replace("torch.", ""),
        "device": str(vlm.device),
        "device_map": getattr(vlm.hf, "hf_device_map", None),
        "protocol": cfg.protocol,
        "metrics": list(cfg.metrics),
        "group": cfg.group,
        "layers": layers,
        "target": cfg.target,
        "answer_span": cfg.answer_span,
        "seed": cfg.seed,
        "max_new_tokens": cfg.max_new_tokens,
        "decoding": Decoding.for_model(vlm.hf, cfg.decoding).record(),
        "scored_token": SCORED_TOKEN_RULE,
        "logits": "final norm, lm_head and log-softmax in float32 or wider (scores in float64)",
        "data": data,
        "batch_size": cfg.batch_size,
        "reuse_prefix": cfg.reuse_prefix,
        **({"estimator": cfg.estimator, "estimated": True, "estimator_method": ESTIMATOR_METHOD.format(k=cfg.kl_tokens)
            + ("; " + SATURATION_METHOD if cfg.saturation_fix else "; linear softmax (no saturation fix)"),
            "saturation_fix": cfg.saturation_fix}
           if cfg.estimator != "exact" else {}),
        **({"hybrid": {"margin": cfg.hybrid_margin, "top": cfg.hybrid_top, "method": HYBRID_METHOD}}
           if cfg.estimator == "hybrid" else {}),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "nnsight": nnsight.__version__,
            "numpy": np.__version__, "pandas": pd.__version__,
        },
    }


class _Progress:
    """The progress line (samples done, samples/s, time left, shard) and, every ``every`` seconds, the same in the log:
    a terminal shows the bar, a cluster job's log file gets the lines."""

    def __init__(self, total: int, shard: Shard, enabled: bool, every: float = 60.0):
        where = f" shard {shard}" if shard.count > 1 else ""
        self.label, self.total, self.every = f"scan{where}", total, every
        self.bar = tqdm(total=total, unit="sample", disable=not enabled, dynamic_ncols=True, desc=self.label,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total} samples "
                                   "[{elapsed}<{remaining}, {rate_fmt}]")
        self.start = self.last = time.monotonic()

    def to(self, n: float) -> None:
        """Move to ``n`` samples (set, not added: sums of 1/k overshoot by rounding and tqdm then warns)."""
        self.bar.n = n
        self.bar.update(0)
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            log.info("%s", self.line(n, now - self.start))

    def line(self, n: float, seconds: float) -> str:
        rate = n / seconds if seconds > 0 else 0.0
        left = f"{(self.total - n) / rate:.0f} s left" if rate > 0 else "time left unknown"
        return f"{self.label}: {n:.0f}/{self.total} samples, {rate:.3g} samples/s, {left}"

    def close(self) -> None:
        self.bar.close()


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def scan(
    model: VisionLM | str | Path,
    samples: str | Path | Iterable[Sample | Mapping[str, Any]],
    *,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    config: ScanConfig | None = None,
    **options: Any,
) -> ScanResult:
    """Measure per-layer information of visual tokens.

    ``scan(model, samples, layers="all", group=2, metrics=("kl", "dlogp"))``.
    ``model`` is a loaded :class:`VisionLM` or a hub id / directory; ``samples``
    a horizon JSONL (the README's Dataset file section) path or records. Options are the fields of
    :class:`ScanConfig`. With ``out`` the run directory is written (and resumed
    with ``resume=True``); the returned frames are the same tables, read from
    it when first asked for. ``shard="i/n"`` scans every n-th sample from the
    i-th into ``out``, next to the other shards' parts; the result covers every
    shard's committed samples.
    """
    cfg = config or ScanConfig(**{k: tuple(v) if k == "metrics" and v else v for k, v in options.items()})
    cfg.validate()
    data_name = str(Path(samples).resolve()) if isinstance(samples, (str, Path)) else None
    records = as_samples(samples, strict=cfg.on_error == "stop")
    if cfg.limit:
        records = records[: cfg.limit]
    where = str(samples) if data_name else "samples"
    if out is not None:
        check_out_folder(Path(out))  # a file or an unwritable folder, before the weights load
    if not isinstance(model, VisionLM):
        refuse_extra_images(model, records, where)  # before the weights load
    vlm = model if isinstance(model, VisionLM) else load(model)
    most = max(records, key=lambda s: len(s.images))
    if len(most.images) > 1:
        vlm.adapter.check_image_count(len(most.images), f"{where}: sample {most.id!r}")
        if vlm.adapter.multi_image_warning:
            log.warning(vlm.adapter.multi_image_warning)
    ensure_maskable_attention(vlm)
    layers = parse_layers(cfg.layers, vlm.n_layers)
    meta = run_config(vlm, cfg, layers, data_name)

    shard = cfg.shard or Shard()
    store = RunStore(out, shard) if out is not None else None
    if store:
        store.open(meta, resume)
    try:
        mine = shard.take(records)
        done = store.completed() if store else set()
        todo = [s for s in mine if s.id not in done]
        if store:
            store.begin(len(mine), len(mine) - len(todo))
        if len(todo) < len(mine):
            log.info("resuming%s: %d of %d samples already done", f" shard {shard}" if shard.count > 1 else "",
                     len(mine) - len(todo), len(mine))

        rows, group_frames, score_frames = [], [], []
        _seed(cfg.seed)
        bar = _Progress(len(todo), shard, progress)
        try:
            for n, sample in enumerate(todo):
                try:
                    row, groups, scores = scan_sample(vlm, sample, cfg, layers, on_batch=lambda f, at=n: bar.to(at + f))
                except SampleError as exc:
                    if cfg.on_error == "stop":
                        raise
                    log.warning("skipping %s", exc)
                    row = {"sample_id": sample.id, "task": sample.task, "question": sample.question,
                           "answer": sample.answer, "image": str(sample.image), "status": f"error: {exc.reason}"}
                    groups = pd.DataFrame(columns=GROUP_COLUMNS)
                    scores = pd.DataFrame(columns=SCORE_COLUMNS)
                bar.to(n + 1)
                if store:
                    store.add(row, groups, scores)
                else:
                    rows.append(row)
                    group_frames.append(groups)
                    score_frames.append(scores)
        finally:
            bar.close()
    finally:
        if store:
            store.close()

    if store:
        return ScanResult(config=read_config(store.path), run_dir=store.path)
    samples_df = pd.DataFrame([{k: r.get(k) for k in SAMPLE_COLUMNS} for r in rows], columns=SAMPLE_COLUMNS)
    groups_df = pd.concat(group_frames, ignore_index=True) if group_frames else pd.DataFrame(columns=GROUP_COLUMNS)
    scores_df = pd.concat([f for f in score_frames if len(f)], ignore_index=True) if any(len(f) for f in score_frames) else pd.DataFrame(columns=SCORE_COLUMNS)
    return ScanResult(samples_df, groups_df, scores_df, meta, None)
