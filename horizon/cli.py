"""The `horizon` command: a thin shell over the Python API.

User errors (HorizonError) end with one line on stderr and exit status 2,
never a traceback; completed samples stay on disk and `--resume` continues.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import HorizonError
from .store import LOG_NAME

log = logging.getLogger("horizon")


def _scan(args: argparse.Namespace) -> int:
    from .model import load
    from .scan import ScanConfig, scan

    cfg = ScanConfig(
        layers=args.layers, group=args.group, protocol=args.protocol,
        metrics=tuple(m.strip() for m in args.metric.split(",") if m.strip()) if args.metric else None,
        target=args.target, answer_span=args.answer_span, batch_size=args.batch_size, seed=args.seed,
        limit=args.limit, on_error=args.on_error, max_new_tokens=args.max_new_tokens,
    )
    cfg.validate()  # fail on bad options before loading a model
    if not Path(args.data).is_file():
        raise HorizonError(f"dataset file not found: {args.data}")
    out = Path(args.out)
    _log_to(out if (out / "run.json").exists() or not out.exists() or not any(out.iterdir()) else None)
    vlm = load(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code,
               allow_unsafe_weights=args.allow_unsafe_weights)
    result = scan(vlm, args.data, out=out, resume=args.resume, config=cfg, progress=not args.quiet)
    ok = (result.samples.status == "ok").sum()
    print(f"run written to {out} ({ok} of {len(result.samples)} samples ok, {len(result.scores)} scores)")
    return 0


def _stats_params(args: argparse.Namespace):
    from .stats import StatsParams

    return StatsParams(threshold=args.threshold, alpha=args.alpha, uniformity_threshold=args.uniformity,
                       n_boot=args.n_boot, n_perm=args.n_perm, seed=args.seed)


def _analyze(args: argparse.Namespace) -> int:
    from .report import analyze, format_table

    result = analyze(args.runs, args.out, metric=args.metric, params=_stats_params(args))
    print(format_table(result["summary"]))
    comparisons = result["comparisons"]
    for row in comparisons.itertuples():
        a = row.task_a if row.kind == "task" else row.model_a
        b = row.task_b if row.kind == "task" else row.model_b
        where = row.model_a if row.kind == "task" else row.task_a
        print(f"{row.metric} {row.kind}s in {where}: horizon({a}) - horizon({b}) = {row.difference:+.3g} {row.units} "
              f"[{row.difference_lo:+.3g}, {row.difference_hi:+.3g}], permutation p = {row.p_value:.3g}")
    print(f"wrote summary.json, summary.csv, curves.csv, comparisons.csv and {len(result['figures'])} figure files to {args.out}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from .report import analyze

    result = analyze(args.runs, args.out, metric=args.metric, params=_stats_params(args), tables=False)
    print(f"wrote {len(result['figures'])} figure files to {args.out}")
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


def _log_to(run_dir: Path | None) -> None:
    if run_dir is None:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / LOG_NAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=Path(args.out), runs=Path(args.runs), limit=args.limit, n_boot=args.n_boot,
                        n_perm=args.n_perm))
    print(f"figures and summary in {args.out}; runs in {args.runs}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="horizon", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("scan", help="measure per-layer information of visual tokens; write a run directory")
    s.add_argument("--model", required=True, help="hub id or local checkpoint directory")
    s.add_argument("--data", required=True, help="dataset JSONL (DESIGN §4)")
    s.add_argument("--out", required=True, help="run directory to write")
    s.add_argument("--layers", default="all", help="all | 0,4,8 | 0:32:2 (default: all)")
    s.add_argument("--group", type=int, default=2, help="k x k window of visual tokens per group (default: 2)")
    s.add_argument("--protocol", default="remove", choices=["remove", "keep"])
    s.add_argument("--metric", default=None, help="comma list: kl,dlogp,dprob (remove) or gain_logp,gain_prob (keep)")
    s.add_argument("--target", default="gt", choices=["gt", "pred"])
    s.add_argument("--answer-span", default="first", choices=["first", "full"])
    s.add_argument("--limit", type=int, default=None, help="first N samples only")
    s.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    s.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto")
    s.add_argument("--batch-size", type=int, default=None, help="ablations per forward pass (default: automatic)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--resume", action="store_true", help="continue a killed run (same configuration)")
    s.add_argument("--on-error", default="stop", choices=["stop", "skip"],
                   help="skip: record a bad sample's error in samples.parquet and go on")
    s.add_argument("--max-new-tokens", type=int, default=16, help="greedy answer length for clean_pred / --target pred")
    s.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own Python code")
    s.add_argument("--allow-unsafe-weights", action="store_true", help="allow pickle (.bin) weights")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_scan)

    for name, func, text in (("analyze", _analyze, "horizon, uniformity and comparisons: tables and figures"),
                             ("plot", _plot, "figures only")):
        a = sub.add_parser(name, help=text)
        a.add_argument("runs", nargs="+", help="run directories (DESIGN §3), any number of models and tasks")
        a.add_argument("--out", required=True, help="output directory")
        a.add_argument("--metric", default=None, help="analyse one metric only (default: every metric present)")
        a.add_argument("--threshold", type=float, default=0.05, help="vanishing threshold, fraction of the curve max")
        a.add_argument("--alpha", type=float, default=0.05, help="Holm-corrected one-sided test level")
        a.add_argument("--uniformity", type=float, default=0.9, help="uniformity level for the onset")
        a.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
        a.add_argument("--n-perm", type=int, default=1000, help="permutations for comparison p-values")
        a.add_argument("--seed", type=int, default=0)
        a.set_defaults(func=func)

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

    d = sub.add_parser("demo", help="end to end on the embedded default")
    d.add_argument("--out", default="figures", help="figures and summary tables (default: figures)")
    d.add_argument("--runs", default="demo-run", help="scan run directories, resumable (default: demo-run)")
    d.add_argument("--limit", type=int, default=40, help="samples per task (default: 40)")
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
        return 2
    except KeyboardInterrupt:
        print("horizon: interrupted; completed samples are on disk, rerun with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
