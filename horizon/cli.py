"""The `horizon` command: a thin shell over the Python API.

User errors (HorizonError) end with one line on stderr and exit status 2,
never a traceback; completed samples stay on disk and `--resume` continues.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .errors import HorizonError
from .decoding import DECODING_RULES, Decoding
from .records import VANISHING_TESTS
from .io.runs import LOG_NAME

log = logging.getLogger("horizon")


def _scan(args: argparse.Namespace) -> int:
    from .data import as_samples, missing_message
    from .io.runs import RunStore, Shard, count_rows, read_table
    from .models import load, refuse_extra_images
    from .models.identity import model_keys
    from .options import check_out_folder
    from .scan import ScanConfig, combined_shard, distributed_shard, scan

    ranks = distributed_shard()  # under torchrun: this rank's share
    shard = combined_shard(Shard.parse(args.shard) if args.shard else None, ranks)
    cfg = ScanConfig(
        layers=args.layers, group=args.group, protocol=args.protocol,
        metrics=tuple(m.strip() for m in args.metric.split(",") if m.strip()) if args.metric else None,
        target=args.target, answer_span=args.answer_span, batch_size=args.batch_size, seed=args.seed,
        limit=args.limit, on_error=args.on_error, max_new_tokens=args.max_new_tokens, decoding=args.decoding,
        shard=shard, estimator=args.estimator, kl_tokens=args.kl_tokens, hybrid_margin=args.hybrid_margin,
        hybrid_top=args.hybrid_top, saturation_fix=args.saturation_fix,
    )
    cfg.validate()  # fail on bad options before loading a model
    if not Path(args.data).is_file():
        raise HorizonError(missing_message(args.data, "dataset file"))
    out = Path(args.out)
    check_out_folder(out)  # a file, a read-only or foreign folder: refused before anything is written there
    _log_to(out if (out / "run.json").exists() or not out.exists() or not any(out.iterdir()) else None)
    # a model family that cannot take the data's image count says so before its weights load
    refuse_extra_images(args.model, as_samples(args.data, strict=cfg.on_error == "stop"), args.data,
                        args.trust_remote_code)
    device = args.device
    if ranks is not None and args.device_map is None and device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():  # one GPU per rank, as torchrun numbers them on each node
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', ranks.index)) % torch.cuda.device_count()}"
    # a rank torchrun restarted after a failure continues its shard
    resume = args.resume or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0
    RunStore(out, shard).preflight(resume, model_keys(args.model))  # before the weights load
    vlm = load(args.model, dtype=args.dtype, device=device, trust_remote_code=args.trust_remote_code,
               device_map=_device_map(args.device_map), offload_folder=args.offload_folder,
               allow_unsafe_weights=args.allow_unsafe_weights)
    scan(vlm, args.data, out=out, resume=resume, config=cfg, progress=not args.quiet)
    samples = read_table(out, "samples", columns=["sample_id", "status"])
    ok = (samples.status == "ok").sum()
    skipped = _skipped(samples)
    if cfg.estimator == "hybrid":
        exact = read_table(out, "scores", columns=["exact"]).exact
        print(f"hybrid: {exact.mean():.1%} of the scores measured exactly, the rest estimated (the scores' exact "
              "column says which)")
    mine = f"shard {shard} done; " if shard.count > 1 else ""
    print(f"{mine}run written to {out} ({ok} of {len(samples)} samples ok, {count_rows(out, 'scores')} scores"
          + (f"; {skipped}" if skipped else "") + ")")
    if shard.count > 1:
        print(_status_table(out))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from .data import as_samples, missing_message
    from .models import load, refuse_extra_images
    from .scan import ScanConfig
    from .validate import format_validation, scan_config, validate_estimator

    # every user error before the weights load
    params = _stats_params(args)
    cfg = scan_config(ScanConfig(layers=args.layers, group=args.group, protocol=args.protocol, target=args.target,
                                 answer_span=args.answer_span, batch_size=args.batch_size, seed=args.seed,
                                 kl_tokens=args.kl_tokens, hybrid_margin=args.hybrid_margin,
                                 hybrid_top=args.hybrid_top, saturation_fix=args.saturation_fix),
                      args.limit, args.metric, estimator=args.estimator)
    if not Path(args.data).is_file():
        raise HorizonError(missing_message(args.data, "dataset file"))
    refuse_extra_images(args.model, as_samples(args.data)[: args.limit], args.data)
    vlm = load(args.model, dtype=args.dtype, device=args.device)
    result = validate_estimator(vlm, args.data, args.out, estimator=args.estimator, limit=args.limit,
                                metric=args.metric, config=cfg, progress=not args.quiet,
                                params=params)
    print(format_validation(result))
    print(f"agreement.csv, agreement_summary.csv and validation.json in {args.out}; "
          f"runs {result['runs']['exact']} and {result['runs']['estimate']}")
    return 0


def _status_table(run: Path) -> str:
    """Per shard: done / total, errors, running, rate, time left; then the run's totals."""
    from .io.runs import run_status

    status = run_status(run)
    lines = [f"{'shard':>9}  {'done':>13}  errors  {'state':<8}  {'samples/s':>9}  time left"]
    for r in status.itertuples():
        state = "running" if r.running else ("complete" if r.done >= r.total else "stopped")
        rate = "-" if r.samples_per_s is None or r.samples_per_s != r.samples_per_s else f"{r.samples_per_s:.3g}"
        eta = "-" if r.eta_s is None or r.eta_s != r.eta_s else _duration(r.eta_s)
        lines.append(f"{r.shard:>9}  {f'{r.done}/{r.total}':>13}  {r.errors:>6}  {state:<8}  {rate:>9}  {eta}")
    if len(status):
        shards = {int(s.split("/")[1]) for s in status.shard}
        seen = len(status)
        total, done = int(status.total.sum()), int(status.done.sum())
        etas = [e for e in status.eta_s if e is not None and e == e]
        missing = next(iter(shards)) - seen if len(shards) == 1 else 0
        note = f"; {missing} shard(s) not started, not counted" if missing else ""
        left = _duration(max(etas)) if etas and len(etas) == seen and not missing else "unknown"
        lines.append(f"{'all':>9}  {f'{done}/{total}':>13}  {int(status.errors.sum()):>6}  time left {left} "
                     f"(the slowest shard, shards running side by side){note}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _status(args: argparse.Namespace) -> int:
    from .io.runs import read_config

    read_config(Path(args.run))  # not a run: one line
    if not (Path(args.run) / "shards").is_dir():
        print(f"{args.run}: a run without shard manifests (written by hand or by an older horizon)")
        return 0
    print(_status_table(Path(args.run)))
    return 0


def _device_map(text: str | None):
    """--device-map: a strategy name, or a JSON file mapping module names to devices."""
    from .benchmarks.files import read_json

    if text is None or not text.endswith(".json"):
        return text
    mapping = read_json(Path(text), "--device-map")
    if not isinstance(mapping, dict):
        raise HorizonError(f"--device-map {text}: expected a JSON object of module name -> device")
    return mapping


def _stats_params(args: argparse.Namespace):
    from .stats import StatsParams

    return StatsParams(threshold=args.threshold, alpha=args.alpha, uniformity_threshold=args.uniformity,
                       vanishing_test=args.vanishing_test,
                       n_boot=args.n_boot, n_perm=args.n_perm, seed=args.seed)


def _analyze(args: argparse.Namespace) -> int:
    from .analysis import analyze, format_table

    result = analyze(args.runs, args.out, metric=args.metric, params=_stats_params(args))
    print(format_table(result["summary"]))
    comparisons = result["comparisons"]
    for row in comparisons.itertuples():
        a = row.task_a if row.kind == "task" else row.model_a
        b = row.task_b if row.kind == "task" else row.model_b
        where = row.model_a if row.kind == "task" else row.task_a
        if row.difference != row.difference:  # NaN: nothing to compare
            print(f"{row.metric} {row.kind}s in {where}: {a} vs {b}: {row.note}")
            continue
        one_sided = f" ({row.note})" if row.note.startswith("only ") else ""  # the other side has no horizon
        print(f"{row.metric} {row.kind}s in {where}: horizon({a}) - horizon({b}) = {row.difference:+.3g} {row.units} "
              f"[{row.difference_lo:+.3g}, {row.difference_hi:+.3g}], permutation p = {row.p_value:.3g}{one_sided}")
    print(f"wrote summary.json, summary.csv, curves.csv, comparisons.csv and {len(result['figures'])} figure files to {args.out}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from .analysis import analyze

    result = analyze(args.runs, args.out, metric=args.metric, params=_stats_params(args), tables=False)
    print(f"wrote {len(result['figures'])} figure files to {args.out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import report

    result = report(args.runs, args.out, grids=args.grid, metric=args.metric, params=_stats_params(args),
                    max_samples=args.max_samples, image_side=args.image_side, title=args.title)
    n_runs, n_grids = len(args.runs), len(args.grid)
    grids = f" and {n_grids} pruning grid{'s' * (n_grids != 1)}" if n_grids else ""
    print(f"wrote {result['path']} ({result['size'] / 1e6:.2f} MB; {n_runs} run{'s' * (n_runs != 1)}{grids}): "
          "one self-contained page, open it in any browser, offline")
    return 0


def _tasks(args: argparse.Namespace) -> int:
    from .tasks import TASKS, write_task

    for task in args.tasks or TASKS:
        if task not in TASKS:
            raise HorizonError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
        path = write_task(task, args.out, n=args.n, seed=args.seed)
        print(f"wrote {args.n} {task} samples to {path}")
    return 0


def _zoo_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tqdm.auto import tqdm

    from .zoo import ZOO, train

    if args.name not in ZOO:
        raise HorizonError(f"unknown zoo model {args.name!r}; zoo: {', '.join(ZOO)}")
    spec = ZOO[args.name]
    if args.seed is not None:
        spec = replace(spec, seed=args.seed)
    out = Path(args.out) / spec.name
    steps = args.steps or spec.steps
    bar = tqdm(total=steps, desc=f"train {spec.name}", dynamic_ncols=True)

    def progress(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")

    result = train(spec, out, tasks_dir=args.tasks, steps=steps, progress=progress, eval_limit=args.eval_limit)
    bar.close()
    accuracy = ", ".join(f"{t} {a:.1%}" for t, a in result.accuracy.items())
    print(f"trained {spec.name} in {result.seconds / 60:.1f} min -> {out} ({accuracy})")
    return 0


def _prune_config(args: argparse.Namespace, schedule: str = "none"):
    from .prune.evaluate import PruneConfig

    cfg = PruneConfig(
        schedule=schedule, positions=args.positions, switch_at=getattr(args, "switch_at", None),
        summary=args.summary, horizon_metric=args.horizon_metric, horizon_model=args.horizon_model,
        horizon_task=args.horizon_task, seeds=args.seeds, seed=args.seed, max_new_tokens=args.max_new_tokens,
        metric=args.metric, info_run=getattr(args, "info_run", None), limit=args.limit, on_error=args.on_error,
        decoding=args.decoding, batch_size=args.batch_size,
    )
    cfg.validate()
    return cfg


def _load_for_eval(args: argparse.Namespace):
    from .models import load, refuse_extra_images
    from .benchmarks import read_eval

    evalset = read_eval(args.data, answers=args.answers, image_folder=args.image_folder, format=args.format,
                        strict=args.on_error == "stop")
    refuse_extra_images(args.model, evalset.samples, args.data, args.trust_remote_code)
    vlm = load(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code,
               device_map=_device_map(args.device_map), offload_folder=args.offload_folder,
               allow_unsafe_weights=args.allow_unsafe_weights)
    return vlm, evalset


def _prune_eval(args: argparse.Namespace) -> int:
    from .prune.evaluate import EvalStore, prune_eval

    cfg = _prune_config(args, args.schedule)
    EvalStore(Path(args.out)).preflight(args.resume)  # before the weights load: nothing of the user's overwritten
    vlm, evalset = _load_for_eval(args)
    result = prune_eval(vlm, evalset, out=args.out, resume=args.resume, config=cfg, progress=not args.quiet)
    s = result.summary
    skipped = _skipped(result.predictions)
    if s.get("n_samples", 0) == 0:
        raise HorizonError(f"no sample could be evaluated ({skipped}); see {args.out}/predictions.jsonl")
    spread = f" ± {s['accuracy_std']:.3f} over {s['n_seeds']} seeds" if s["n_seeds"] > 1 else ""
    ci = "" if s["accuracy_ci_lo"] != s["accuracy_ci_lo"] else \
        f" (95% CI over samples {s['accuracy_ci_lo']:.3f}-{s['accuracy_ci_hi']:.3f})"
    capped = f"; {_capped(s)}" if s["n_capped"] else ""
    print(f"{s['metric']} accuracy {s['accuracy']:.3f}{spread}{ci} on {s['n_samples']} samples; "
          f"{s['avg_visual_tokens']:.1f} visual tokens per layer on average, of {_number(s['n_visual'])} per "
          f"sample on average ({s['avg_retained_fraction']:.1%} retained on average){capped}; "
          f"prefill FLOPs {s['relative_flops']:.1%} of unpruned; {s['seconds_per_sample']:.3f} s per answer"
          + (f"; {skipped}" if skipped else ""))
    for task in s["tasks"]:
        capped = f", {task['n_capped']} of {task['n_samples']} capped" if task["n_capped"] else ""
        print(f"  {task['task']}: {task['accuracy']:.3f} ({task['n_samples']} samples, "
              f"{task['avg_visual_tokens']:.1f} visual tokens per layer on average{capped})")
    print(f"scoring: {s['scoring']}")
    print(f"decoding: {Decoding(**s['decoding']).describe()}")
    print(f"predictions and summary in {args.out}")
    return 0


def _number(value: float) -> str:
    """A mean as it is: 280 when whole, else with its decimals (280.35), never rounded to a whole count."""
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}".rstrip("0")


def _capped(summary: dict) -> str:
    return (f"{summary['n_capped']} of {summary['n_samples']} samples capped "
            "(a budget above their visual tokens kept them all)")


def _skipped(predictions, first: int = 3) -> str:
    """'skipped N samples (status error): id (reason), ...' naming the first few; '' when none was."""
    if predictions.empty or "status" not in predictions:
        return ""
    bad = predictions[predictions.status.fillna("ok") != "ok"].drop_duplicates("sample_id")
    if bad.empty:
        return ""
    named = ", ".join(f"{r.sample_id} ({str(r.status).removeprefix('error: ')})" for r in bad.head(first).itertuples())
    more = f", and {len(bad) - first} more" if len(bad) > first else ""
    return f"skipped {len(bad)} sample{'s' * (len(bad) != 1)} (status error): {named}{more}"


def _prune_grid(args: argparse.Namespace) -> int:
    from .prune.grid import GridConfig, parse_switch_layers, preflight_grid, prune_grid

    grid = GridConfig(
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        budgets=_budgets(args.budgets), prune_layer=args.prune_layer,
        switch_layers=parse_switch_layers(args.switch_layers), deep_keep=args.deep_keep,
        singles=not args.no_singles, hybrids=not args.no_hybrids, eval=_prune_config(args),
    )
    grid.validate()  # all but the layers' range, which needs the model
    preflight_grid(Path(args.out), grid)  # before the weights load
    vlm, evalset = _load_for_eval(args)
    frame = prune_grid(vlm, evalset, args.out, grid, progress=not args.quiet)
    cols = ["task", "method", "budget", "switch_layer", "avg_tokens", "accuracy", "accuracy_std"]
    print(frame[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"grid.csv and prune_tradeoff figures in {args.out}")
    return 0


def _budgets(text: str) -> tuple[int | str, ...]:
    """--budgets: token counts stay ints, percentages ("50%") stay text; checked before any model loads."""
    from .prune.schedule import parse_budget

    budgets = tuple(int(p) if p.isdigit() else p for p in (x.strip() for x in text.split(",")) if p)
    for b in budgets:
        parse_budget(str(b), f"--budgets {text!r}")
    return budgets


class _LogFile(logging.FileHandler):
    """The run's log file, ``scan.log`` next to ``run.json``.

    Lines are held in memory until the run exists (its run.json is written), so a command refused after the
    model loaded (a layer out of range, a changed configuration) leaves no folder and no log behind. A line it
    cannot write (a full disk) is dropped: stderr has it, and the one-line error that follows must not drown in
    logging's tracebacks.
    """

    def __init__(self, run_dir: Path):
        super().__init__(run_dir / LOG_NAME, delay=True)
        self.run_dir, self.held = run_dir, []

    def _release(self) -> None:
        held, self.held = self.held, []
        for record in held:
            super().emit(record)

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None and not (self.run_dir / "run.json").exists():
            self.held.append(record)
            return
        self._release()
        super().emit(record)

    def close(self) -> None:
        """Write what is held once the run exists (a command that ends right after writing run.json); a
        refused command drops it."""
        if (self.run_dir / "run.json").exists():
            self._release()
        super().close()

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def _log_to(run_dir: Path | None) -> None:
    if run_dir is None:
        return
    handler = _LogFile(run_dir)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo
    from .stats import StatsParams

    StatsParams(n_boot=args.n_boot, n_perm=args.n_perm)  # refuse bad options before any scan
    run_demo(DemoConfig(out=Path(args.out), runs=Path(args.runs), limit=args.limit, n_boot=args.n_boot,
                        n_perm=args.n_perm, prune=not args.no_prune, prune_limit=args.prune_limit))
    print(f"figures and summary in {args.out}; runs in {args.runs}")
    return 0


def _stats_options(p: argparse.ArgumentParser) -> None:
    """The analysis settings (``StatsParams``, read back by ``_stats_params``), as analyze, plot and report take
    them, and the one metric to analyse."""
    p.add_argument("--metric", default=None, help="analyse one metric only (default: every metric present)")
    p.add_argument("--threshold", type=float, default=0.05, help="vanishing threshold, fraction of the curve max")
    p.add_argument("--alpha", type=float, default=0.05, help="Holm-corrected one-sided test level")
    p.add_argument("--vanishing-test", choices=VANISHING_TESTS, default="not-significant",
                   help="when information counts as vanished: not significantly above the threshold "
                        "(not-significant) or significantly below it (equivalence; the safe reading for pruning)")
    p.add_argument("--uniformity", type=float, default=0.9, help="uniformity level for the onset")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--n-perm", type=int, default=1000, help="permutations for comparison p-values")
    p.add_argument("--seed", type=int, default=0)


def _estimator_options(p: argparse.ArgumentParser) -> None:
    """The gradient and hybrid estimators' settings, as scan and validate-estimator take them."""
    p.add_argument("--hybrid-margin", type=int, default=1, help="hybrid: layers on each side of the estimated "
                   "horizon measured exactly (default: 1)")
    p.add_argument("--hybrid-top", type=float, default=0.10, help="hybrid: share of each layer's groups, the top by "
                   "the estimate, measured exactly (default: 0.10)")
    p.add_argument("--kl-tokens", type=int, default=8, help="gradient estimator: the most probable tokens KL's "
                   "second-order estimate sums over (default: 8)")
    p.add_argument("--no-saturation-fix", dest="saturation_fix", action="store_false",
                   help="gradient estimator: linearise each layer's softmax too (plain attribution patching) "
                        "instead of recomputing it exactly without the group (AtP*; the default)")


def build_parser() -> argparse.ArgumentParser:
    from .benchmarks import format_choices, metric_choices

    parser = argparse.ArgumentParser(prog="horizon", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("scan", help="measure per-layer information of visual tokens; write a run directory")
    s.add_argument("--model", required=True, help="hub id or local checkpoint directory")
    s.add_argument("--data", required=True, help="dataset JSONL (the README's Dataset file section)")
    s.add_argument("--out", required=True, help="run directory to write")
    s.add_argument("--layers", default="all", help="all | 0,4,8 | 0:32:2 (default: all)")
    s.add_argument("--group", type=int, default=2, help="k x k window of visual tokens per group (default: 2)")
    s.add_argument("--protocol", default="remove", choices=["remove", "keep"])
    s.add_argument("--metric", default=None, help="comma list: kl,dlogp,dprob (remove) or gain_logp,gain_prob,keep_prob (keep)")
    s.add_argument("--target", default="gt", choices=["gt", "pred"])
    s.add_argument("--answer-span", default="first", choices=["first", "full"])
    s.add_argument("--limit", type=int, default=None, help="first N samples only")
    s.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    s.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto")
    s.add_argument("--device-map", default=None, help="spread a model over several GPUs: auto | balanced | "
                   "sequential | balanced_low_0 | FILE.json ({module: device}); needs accelerate")
    s.add_argument("--offload-folder", default=None, help="where a device map's 'disk' modules live")
    s.add_argument("--batch-size", type=int, default=None, help="ablations per forward pass (default: automatic)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--resume", action="store_true", help="continue a killed run (same configuration)")
    s.add_argument("--estimator", default="exact", choices=["exact", "gradient", "hybrid"],
                   help="exact: measure every removal (default); gradient: estimate them all from one forward and "
                        "backward pass per sample; hybrid: the estimate, then exact removal around the sample's "
                        "estimated horizon and for each layer's top groups (recorded in run.json and per score)")
    _estimator_options(s)
    s.add_argument("--shard", default=None, help="i/n: scan every n-th sample from the i-th into the shared --out "
                   "(Slurm arrays, shell loops); under torchrun each rank takes its share of it")
    s.add_argument("--on-error", default="stop", choices=["stop", "skip"],
                   help="skip: record a bad sample's error in the samples table and go on")
    s.add_argument("--max-new-tokens", type=int, default=16, help="greedy answer length for clean_pred / --target pred")
    s.add_argument("--decoding", default="checkpoint", choices=DECODING_RULES, help="how answers are generated: checkpoint (greedy under the checkpoint's "
                   "generation config, e.g. its repetition_penalty; the default) or greedy (raw argmax)")
    s.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own Python code")
    s.add_argument("--allow-unsafe-weights", action="store_true", help="allow pickle (.bin) weights")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_scan)

    v = sub.add_parser("validate-estimator", help="scan a few samples exactly and with an estimator; "
                       "correlations, top overlap, horizons, speed-up")
    v.add_argument("--model", required=True, help="hub id or local checkpoint directory")
    v.add_argument("--data", required=True, help="dataset JSONL (the README's Dataset file section)")
    v.add_argument("--out", required=True, help="output directory: both runs (resumable) and the agreement tables")
    v.add_argument("--estimator", default="gradient", help="the estimator to check, as horizon scan takes it: "
                   "gradient (default) | hybrid; exact scans a second time exactly, which must agree perfectly")
    _estimator_options(v)
    v.add_argument("--limit", type=int, default=8, help="first N samples (default: 8)")
    v.add_argument("--metric", default=None, help="compare one metric (default: every metric but keep_prob)")
    v.add_argument("--layers", default="all", help="all | 0,4,8 | 0:32:2 (default: all)")
    v.add_argument("--group", type=int, default=2, help="k x k window of visual tokens per group (default: 2)")
    v.add_argument("--protocol", default="remove", choices=["remove", "keep"])
    v.add_argument("--target", default="gt", choices=["gt", "pred"])
    v.add_argument("--answer-span", default="first", choices=["first", "full"])
    v.add_argument("--batch-size", type=int, default=None, help="ablations per forward pass (default: automatic)")
    v.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    v.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto")
    v.add_argument("--seed", type=int, default=0, help="the scans' and the bootstrap's seed")
    v.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the CIs")
    v.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    v.set_defaults(func=_validate, threshold=0.05, alpha=0.05, uniformity=0.9, vanishing_test="not-significant",
                   n_perm=1000)

    st = sub.add_parser("status", help="done / total per shard of a run, and the time left")
    st.add_argument("run", help="run directory")
    st.set_defaults(func=_status)

    for name, func, text in (("analyze", _analyze, "horizon, uniformity and comparisons: tables and figures"),
                             ("plot", _plot, "figures only")):
        a = sub.add_parser(name, help=text)
        a.add_argument("runs", nargs="+", help="run directories (the README's Run directory section), "
                       "any number of models and tasks")
        a.add_argument("--out", required=True, help="output directory")
        _stats_options(a)
        a.set_defaults(func=func)

    r = sub.add_parser("report", help="one self-contained interactive HTML page: summary, curves, every sample's "
                       "windows layer by layer, comparisons, pruning grids")
    r.add_argument("runs", nargs="+", help="run directories (the README's Run directory section), "
                   "any number of models and tasks")
    r.add_argument("--out", required=True, help="the HTML file to write, e.g. report.html")
    r.add_argument("--grid", action="extend", nargs="+", default=[], metavar="DIR",
                   help="a folder horizon prune-grid wrote (grid.csv and its cells); repeatable")
    _stats_options(r)
    r.add_argument("--max-samples", type=int, default=100, help="samples per run in the sample view (default: 100; "
                   "the statistics use every sample)")
    r.add_argument("--image-side", type=int, default=160, help="longest side of the embedded images, in pixels "
                   "(default: 160)")
    r.add_argument("--title", default="horizon report", help="the page's title")
    r.set_defaults(func=_report)

    t = sub.add_parser("tasks", help="write the synthetic task test sets (deterministic)")
    t.add_argument("tasks", nargs="*", help="tasks to write (default: all)")
    t.add_argument("--out", default="data/tasks")
    t.add_argument("--n", type=int, default=300)
    t.add_argument("--seed", type=int, default=1234)
    t.set_defaults(func=_tasks)

    z = sub.add_parser("zoo", help="the toy model zoo")
    zsub = z.add_subparsers(dest="zoo_command", required=True)
    zt = zsub.add_parser("train", help="train one zoo model from scratch")
    zt.add_argument("name", help="zoo model name (see horizon/zoo.py)")
    zt.add_argument("--out", default="data/zoo")
    zt.add_argument("--tasks", default="data/tasks", help="test sets to evaluate on")
    zt.add_argument("--steps", type=int, default=None)
    zt.add_argument("--seed", type=int, default=None)
    zt.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N samples per task")
    zt.set_defaults(func=_zoo_train)

    def eval_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, help="hub id or local checkpoint directory")
        p.add_argument("--data", required=True, help="questions: horizon JSONL (the README's Dataset file section) "
                       "or a LLaVA eval JSONL")
        p.add_argument("--answers", default=None, help="ground truth for LLaVA eval files (TextVQA json, VQAv2 "
                       "annotations json, MME release folder, POPE coco_pope_*.json folder)")
        p.add_argument("--image-folder", default=None, help="images of a LLaVA eval file")
        p.add_argument("--format", default="auto", choices=format_choices(),
                       help="the benchmark the files belong to (default: auto, told from the files)")
        p.add_argument("--out", required=True, help="output directory (resumable)")
        p.add_argument("--positions", default="original", choices=["original", "renumber"],
                       help="position ids after pruning: original (default) or renumbered 0..n-1")
        p.add_argument("--summary", default=None, help="summary.json of horizon analyze (for the horizon)")
        p.add_argument("--horizon-metric", default="dlogp", help="which metric's horizon (default: dlogp)")
        p.add_argument("--horizon-model", default=None, help="the model's name in summary.json")
        p.add_argument("--horizon-task", default=None, help="take every sample's horizon from this task")
        p.add_argument("--metric", default="auto", choices=metric_choices(),
                       help="scoring (default: auto, the benchmark's official one)")
        p.add_argument("--seeds", type=int, default=None, help="seeds for random stages (default 3)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--max-new-tokens", type=int, default=16)
        p.add_argument("--decoding", default="checkpoint", choices=DECODING_RULES, help="how answers are generated: checkpoint (greedy under the checkpoint's "
                   "generation config, e.g. its repetition_penalty; the default) or greedy (raw argmax)")
        p.add_argument("--limit", type=int, default=None, help="first N samples only")
        p.add_argument("--batch-size", type=int, default=1, help="answers generated together, left-padded, "
                       "continuing the samples' shared prefixes (default 1); the answers do not depend on it")
        p.add_argument("--on-error", default="stop", choices=["stop", "skip"])
        p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
        p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto")
        p.add_argument("--device-map", default=None, help="spread a model over several GPUs: auto | balanced | "
                   "sequential | balanced_low_0 | FILE.json ({module: device}); needs accelerate")
        p.add_argument("--offload-folder", default=None, help="where a device map's 'disk' modules live")
        p.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own Python code")
        p.add_argument("--allow-unsafe-weights", action="store_true", help="allow pickle (.bin) weights")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    pe = sub.add_parser("prune-eval", help="greedy answers with a pruning schedule applied, scored")
    eval_options(pe)
    pe.add_argument("--schedule", required=True,
                    help="stages method@layer:keep, e.g. divprune@0:284,random@20:38 (or none); keep may be a "
                    "percentage of each sample's visual tokens, divprune@0:50%%")
    pe.add_argument("--switch-at", default=None, help="'horizon' (needs --summary) or a layer: where the "
                    "schedule's random stage goes")
    pe.add_argument("--info-run", default=None, help="scan run directory supplying scores for info stages")
    pe.add_argument("--resume", action="store_true", help="continue a killed evaluation (same configuration)")
    pe.set_defaults(func=_prune_eval)

    pg = sub.add_parser("prune-grid", help="methods x budgets x switch layers; accuracy vs visual tokens")
    eval_options(pg)
    pg.add_argument("--methods", default="random,fastv,divprune,dart")
    pg.add_argument("--budgets", default="192,128,64", help="visual tokens kept by the first stage: counts, or "
                    "percentages of each sample's visual tokens (50%%,25%%)")
    pg.add_argument("--prune-layer", type=int, default=2, help="layer of the first stage (default: 2)")
    pg.add_argument("--switch-layers", default="horizon", help="layers (or 'horizon') of the hybrids' random stage")
    pg.add_argument("--deep-keep", default=None, help="tokens (or a percentage) the random stage keeps "
                    "(default: budget/4)")
    pg.add_argument("--no-singles", action="store_true", help="skip the single-stage schedules")
    pg.add_argument("--no-hybrids", action="store_true", help="skip the method+random hybrids")
    pg.set_defaults(func=_prune_grid)

    d = sub.add_parser("demo", help="end to end on the embedded default")
    d.add_argument("--out", default="figures", help="figures and summary tables (default: figures)")
    d.add_argument("--runs", default="demo-run", help="scan run directories, resumable (default: demo-run)")
    d.add_argument("--limit", type=int, default=40, help="samples per task (default: 40)")
    d.add_argument("--prune-limit", type=int, default=16, help="samples per task in the pruning grid (default: 16)")
    d.add_argument("--no-prune", action="store_true", help="skip the pruning grid")
    d.add_argument("--n-boot", type=int, default=1000)
    d.add_argument("--n-perm", type=int, default=1000)
    d.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Configure horizon's own logger only: other libraries (fontTools via
    # matplotlib's PDF backend, ...) keep their quiet defaults.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("horizon: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    log.propagate = False
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        return args.func(args)
    except HorizonError as exc:
        print(f"horizon: error: {exc}", file=sys.stderr)
        for h in log.handlers:  # a run this command wrote to says in its log why it stopped (a refusal writes none)
            if isinstance(h, _LogFile) and h.stream is not None:
                h.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, "error: %s", (exc,), None))
        return 2
    except KeyboardInterrupt:
        print("horizon: interrupted; completed samples are on disk, rerun with --resume", file=sys.stderr)
        return 130
    finally:
        for h in log.handlers:
            if isinstance(h, _LogFile):
                h.close()
        log.handlers[:] = [handler]


if __name__ == "__main__":
    sys.exit(main())
