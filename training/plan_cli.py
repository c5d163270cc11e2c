"""`longctx plan`: the compiled memory proof of each training stage, from the command line
(longctx/cli.py wires it). Heavy imports (JAX, libtpu) wait until a stage is planned."""

from __future__ import annotations

import argparse
from typing import Any

import yaml
from rich.console import Console

from curation.config_errors import did_you_mean, read_inline_yaml
from curation.units import GiB
from training.layouts import search_stage
from training.plan import StageReport, plan_stage
from training.plan_inputs import load_stages
from training.plan_report import JSON_KEYS, render_table, write_json
from training.plan_targets import PlanError, resolve_target

MAX_COMPILES = 4  # --max-compiles' default (None in argparse: given without --search, it is refused)

HELP = ("compile each stage's real train step ahead of time for a TPU slice (or these devices), or estimate "
        "it for GPUs: bytes per device, fits, FLOPs, step time")


def add_plan_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("plan", help=HELP, description=HELP + ". Nothing is allocated: the inputs are "
                                   "abstract shapes carrying the trainer's shardings.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="a train config YAML (e.g. configs/train/stage-32k.yaml)")
    source.add_argument("--plan", help="a stage plan YAML (e.g. configs/train/lwm-text.yaml): every stage")
    parser.add_argument("--topology", default=None,
                        help="default: the plan's `topology:` key, else local. local (this machine's devices), a TPU topology such as v5p:4x4x8 (compile-only, needs "
                             "libtpu), or gpu:NAMExCOUNT such as gpu:h100x64 (an analytic estimate)")
    parser.add_argument("--mesh", help="mesh to plan instead of the config's (dp=1,fsdp=-1,tp=1,sp=8); not with --search")
    parser.add_argument("--remat", choices=("none", "dots_saveable", "full"),
                        help="remat policy instead of the config's; not with --search")
    parser.add_argument("--state-axes", default=None,
                        help="mesh axes that split params, gradients and Adam moments: fsdp,sp (default, ZeRO-3 "
                             "over the sequence devices too) or fsdp")
    parser.add_argument("--stages", help="only these stages of a plan, comma-separated names (e.g. 32k,1m)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a train config key for every stage (YAML value), e.g. --set global_batch=16")
    parser.add_argument("--layers", help="compile N layers of the model (a cut model, faster), or N1,N2 to extrapolate "
                                         "the full depth linearly from two compiles (compiled targets only)")
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation for the step time (default 0.4)")
    parser.add_argument("--hbm-gib", type=float, help="judge fits against this much memory per device instead of the datasheet's")
    parser.add_argument("--search", action="store_true",
                        help="try mesh splits (fsdp x sp x tp) and remat policies; report the cheapest that fits "
                             "(it chooses the mesh and remat: not with --mesh or --remat)")
    parser.add_argument("--max-compiles", type=int, help=f"compiles per stage in --search (default {MAX_COMPILES})")
    parser.add_argument("--estimate", action="store_true", help="analytic estimate only, even where compiling is possible")
    parser.add_argument("--json", help="write the per-stage numbers to this JSON file")
    parser.set_defaults(plan_parser=parser)  # run_plan's errors print this command's usage, as argparse's do
    return parser


def parse_layers(spec: str | None) -> tuple[int, ...]:
    """`--layers`: `N` (compile a cut model) or `N1,N2` (extrapolate the full depth); empty: the whole model."""
    if not spec:
        return ()
    try:
        return tuple(int(x) for x in spec.split(",") if x.strip())
    except ValueError:
        raise PlanError(f"--layers {spec!r}: expected N or N1,N2 (e.g. 2,4)") from None


def _set_flags(pairs: list[str]) -> dict[str, str]:
    """Each --set key as the flag that gave it (the last one wins, as in `_overrides`)."""
    return {pair.partition("=")[0].strip(): f"--set {pair}" for pair in pairs}


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise PlanError(f"--set {pair!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = read_inline_yaml(value, f"--set {pair!r}")
        except ValueError as err:
            raise PlanError(str(err)) from None
    return out


def _plan_topology(path: str) -> str | None:
    """The `topology:` a stage plan states for itself (load_stages has already validated the file)."""
    with open(path) as fh:
        return (yaml.safe_load(fh) or {}).get("topology")


def _proposal(report: StageReport) -> str:
    """The stage's settings as a stage-plan `overrides` fragment (YAML flow style)."""
    m = report.mesh
    mesh = f"dp={m['dp']},fsdp={m['fsdp']},tp={m['tp']},sp={m['sp']}"
    return f"{report.name}: {{mesh: \"{mesh}\", grad_accum: {report.grad_accum}, remat: {report.remat}}}"


def run_plan(args: argparse.Namespace, console: Console) -> int:
    """`longctx plan`: 0 when every stage fits, 1 when one does not. A setting the plan cannot
    take (a flag, --set, the config or stage plan) stops it as every command's errors do: the
    usage line, then one line `longctx plan: error: ...` on stderr, exit code 2 (SystemExit)."""
    try:
        return _run(args, console)
    except PlanError as err:
        parser = getattr(args, "plan_parser", None) or argparse.ArgumentParser(prog="longctx plan")
        parser.error(" ".join(str(err).split()))


def _check_numbers(args: argparse.Namespace) -> None:
    """The plan's own numeric flags, in range (an impossible value is refused, not planned with)."""
    if not 0 < args.mfu <= 1:
        raise PlanError(f"--mfu {args.mfu}: model FLOPs utilisation is a fraction, 0 < mfu <= 1 (e.g. 0.4)")
    if args.hbm_gib is not None and not args.hbm_gib > 0:
        raise PlanError(f"--hbm-gib {args.hbm_gib}: memory per device must be > 0")
    if args.max_compiles is not None and args.max_compiles < 1:
        raise PlanError(f"--max-compiles {args.max_compiles}: must be >= 1")


def _check_flag_combinations(args: argparse.Namespace) -> None:
    """Flags the others leave unused are refused, not ignored. --search chooses the mesh and remat
    of each stage itself (MaxText-style: a search is over the layout, so a fixed one is a plan,
    not a search); --max-compiles only bounds a search."""
    if args.search:
        given = [f"--{name} {value}" for name, value in (("mesh", args.mesh), ("remat", args.remat)) if value is not None]
        if given:
            raise PlanError(f"{' and '.join(given)} with --search: the search chooses each stage's mesh and remat "
                            f"itself; drop {' and '.join(g.split()[0] for g in given)} to search, or drop --search "
                            "to plan that layout")
    elif args.max_compiles is not None:
        raise PlanError(f"--max-compiles {args.max_compiles} needs --search: it caps the compiles of the layout search "
                        "(without it each stage compiles once, or twice with --layers N1,N2)")


def _check_layers(layers: tuple[int, ...], args: argparse.Namespace, target) -> None:
    """--layers where nothing is compiled: the estimate has no compiles to extrapolate from, and the
    search's estimate judges the whole model."""
    if not layers or (target.compiles and not args.estimate):
        return
    how = f"{target.spec} is estimated" + (" (--estimate)" if target.compiles else "") + ", not compiled"
    if args.search:
        raise PlanError(f"--layers {args.layers} with --search: {how}, and the search's estimate judges every layer; "
                        "drop --layers")
    if len(set(layers)) > 1:
        raise PlanError(f"--layers {args.layers} extrapolates from two compiles, but {how} (the estimate covers every "
                        "layer): drop --layers, or give one depth to estimate a cut model")


def _checked(name: str, config, args: argparse.Namespace):
    """`config` validated again as a whole (a stage plan's stages get --set without validation)."""
    from pydantic import ValidationError

    from curation.config_errors import top_level_keys, validation_line
    from training.config import TrainConfig

    unknown = [key for key in _overrides(args.set) if key not in TrainConfig.model_fields]
    if unknown:  # model_copy(update=...) keeps an unknown key out of model_dump: name it here
        raise PlanError(f"--set: unknown key {unknown[0]!r}{did_you_mean(unknown[0], list(TrainConfig.model_fields))}")
    try:
        # warnings=False: a wrong-typed --set value is what validation reports next, in one line;
        # pydantic's serializer would first print a multi-line UserWarning about it.
        return TrainConfig.model_validate(config.model_dump(warnings=False))
    except ValidationError as err:
        source = f"{args.plan}: stage {name}" if args.plan else str(args.config)
        raise PlanError(f"{source}: --set: {validation_line(err, known_keys=top_level_keys(TrainConfig))}") from None


def print_table(console: Console, table) -> None:
    """A table at the console's width on a terminal; into a pipe or file (where the command line
    gives the console a fixed 120 columns) at its natural width, so no column is cut to `…`."""
    if console.is_terminal:
        console.print(table)
        return
    from rich.measure import Measurement

    natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
    width = console.width
    try:
        console.width = max(width, natural)
        console.print(table)
    finally:
        console.width = width


def _run(args: argparse.Namespace, console: Console) -> int:
    from training.mesh import parse_state_axes

    _check_numbers(args)
    _check_flag_combinations(args)
    overrides = _overrides(args.set)
    stages = load_stages(args.config, args.plan, overrides, _set_flags(args.set))
    if overrides and args.plan:  # a plan's stages take --set as an update, unchecked: check each stage with it
        stages = [(name, _checked(name, config, args)) for name, config in stages]
    if args.stages:
        wanted = [s.strip() for s in args.stages.split(",") if s.strip()]
        unknown = sorted(set(wanted) - {name for name, _ in stages})
        if unknown:
            raise PlanError(f"--stages {unknown}: the plan's stages are {[name for name, _ in stages]}")
        stages = [(name, config) for name, config in stages if name in wanted]
    layers = parse_layers(args.layers)
    topology = args.topology or (_plan_topology(args.plan) if args.plan else None) or "local"
    target = resolve_target(topology, None if args.hbm_gib is None else int(args.hbm_gib * GiB))
    _check_layers(layers, args, target)
    if not target.compiles or args.estimate:
        console.print(f"[yellow]{target.spec}: analytic estimate (training.plan.estimate_memory), nothing compiled[/]")
    reports: list[StageReport] = []
    chosen: list[StageReport] = []
    for name, config in stages:
        try:  # the flag, else the config's own key once TrainConfig has one, else fsdp x sp
            state_axes = parse_state_axes(args.state_axes or getattr(config, "state_axes", None))
        except ValueError as err:
            raise PlanError(str(err)) from None
        if args.search:
            with console.status(f"searching layouts for stage {name} on {target.spec}"):
                best, tried = search_stage(name, config, target, mfu=args.mfu, layers=layers, state_axes=state_axes,
                                           max_compiles=MAX_COMPILES if args.max_compiles is None else args.max_compiles, estimate=args.estimate)
            reports.extend(tried)
            compiled = sum(r.method != "estimate" for r in tried)
            console.print(f"stage {name}: {len(tried)} layouts judged ({compiled} compiled)"
                          + ("" if best else f"; [red]none fits {target.spec}[/]"))
            if best is not None:
                chosen.append(best)
            elif tried:  # show how close the leanest try came
                chosen.append(min(tried, key=lambda r: r.peak_bytes_per_device))
            continue
        with console.status(f"{'estimating' if args.estimate or not target.compiles else 'compiling'} stage {name} "
                            f"for {target.spec}"):
            report = plan_stage(name, config, target, mfu=args.mfu, layers=layers, state_axes=state_axes,
                                mesh=args.mesh, remat=args.remat, estimate=args.estimate)
        reports.append(report)
        chosen.append(report)
    print_table(console, render_table(chosen if args.search else reports,
                                      title=f"longctx plan: {target.spec} ({target.num_devices} devices"
                                            f"{', ' + target.chip.name if target.chip else ''})"))
    if args.search:
        for report in chosen:
            verdict = "cheapest layout that fits" if report.fits is not False else "[red]leanest layout tried, does not fit[/]"
            console.print(f"{verdict}: {_proposal(report)}", soft_wrap=not console.is_terminal)
    if args.json:
        path = write_json(chosen if args.search else reports, args.json)
        if args.search:  # every try too, for the record
            import json

            data = json.loads(path.read_text())
            data["tried"] = [r.to_json() for r in reports]
            path.write_text(json.dumps(data, indent=2) + "\n")
        console.print(f"wrote {path} ({', '.join(JSON_KEYS)}, ...)", soft_wrap=not console.is_terminal)
    return 0 if all(r.fits is not False for r in chosen) and (not args.search or len(chosen) == len(stages)) else 1
