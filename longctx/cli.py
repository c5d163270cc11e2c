"""`longctx`: one command line for every job. Beam's own flags pass through unchanged."""

from __future__ import annotations

import argparse
import logging
import sys

from rich.console import Console
from rich.logging import RichHandler

from longctx.accelerators import prefer_cpu_without_accelerators
from pipelines.config import add_config_flags, config_from_args
from pipelines.jobs import DATA_JOBS

BEAM_HELP = (
    "Any Apache Beam pipeline option is accepted too and goes to Beam unchanged (a flag neither "
    "knows stops the job), e.g. --runner DataflowRunner --project P --region R "
    "--temp_location gs://b/tmp --setup_file ./setup.py, or --direct_num_workers 2 "
    "--direct_running_mode multi_processing on the local DirectRunner."
)

PLAN_HELP = """\
train stage after stage from a plan, each stage initialised from the previous one's params
(fresh optimiser state). The plan is a YAML mapping (configs/train/lwm-text.yaml is one):

  out: runs/lwm-text            run folder; stage NAME trains into OUT/NAME (--out overrides it)
  init_from: runs/llama2-7b     optional params checkpoint the first stage starts from
  topology: v5p:4x8x8           optional slice the stages are laid out for (`longctx plan --plan`)
  base: {model: ..., lr: ...}   `longctx train` config keys shared by every stage
  stages:                       trained in this order
    - name: 32k                 the stage's sub-folder of OUT
      data: out/books/32k       the stage's shard folder (longctx train --data)
      overrides: {seq_len: 32768, steps: 1000}   train config keys for this stage only (over base)
  eval: {lengths: [4k, 32k], ruler: {...}, niah: {...}, loss_by_position: {...}}
                                optional: evaluate each stage at its own length when it ends
                                (evals/stage_eval.py EvalSection; `null` leaves one eval out)

Keys not listed are refused (a typo stops the plan before stage 1 trains)."""


class _HelpFormatter(argparse.HelpFormatter):
    """Help lines end with the flag's default (argparse's own defaults; config-driven flags state
    theirs in their help), except where there is none to show or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.default is None or action.default is False or action.default == argparse.SUPPRESS
                or not action.option_strings
                or "default" in text.lower()):
            return text
        return text + " (default: %(default)s)"


class _PlanHelpFormatter(argparse.RawDescriptionHelpFormatter, _HelpFormatter):
    """Keeps the plan schema's layout in `train-stages --help`."""


USAGE_LINES = 8  # an error's usage block longer than this is cut to a pointer to --help


class _Parser(argparse.ArgumentParser):
    """Every (sub)command parser shows defaults in --help and takes flags only as spelt out
    (subparsers inherit the parser class): an abbreviation such as `--glob 4` for --global-batch
    is an unknown flag, as it is for Beam's options, so a mistyped flag never lands on another."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def format_usage(self) -> str:
        """The usage an error prints above its line: a data job's flags fill some 30 lines, which
        bury the one line that says what is wrong, so a long usage is cut to a pointer to --help
        (which still shows it whole)."""
        usage = super().format_usage()
        if usage.count("\n") <= USAGE_LINES:
            return usage
        return f"usage: {self.prog} [flags ...]  (every flag: {self.prog} --help)\n"


def _parser() -> argparse.ArgumentParser:
    from training.config import TrainConfig
    from training.generate_cli import add_generate_parser

    parser = _Parser(prog="longctx", description="Build million-token training data and train on it.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every file read and shard written")
    commands = parser.add_subparsers(dest="command", required=True)
    for job in DATA_JOBS.values():
        parser_ = commands.add_parser(job.name, help=job.help, description=(job.config.__doc__ or "") + " " + BEAM_HELP)
        add_config_flags(parser_, job.config)

    train = commands.add_parser("train", help="train a LLaMA model on one stage's shards", description=TrainConfig.__doc__)
    add_config_flags(train, TrainConfig)

    stages = commands.add_parser("train-stages", help="train stage after stage from a plan, each from the previous one's params",
                                 description=PLAN_HELP, formatter_class=_PlanHelpFormatter)
    stages.add_argument("--plan", required=True, help="stage plan YAML (e.g. configs/train/lwm-text.yaml)")
    stages.add_argument("--out", help="override the plan's run folder")

    convert = commands.add_parser("convert", help="Hugging Face LLaMA <-> longctx params checkpoint")
    direction = convert.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from-hf", help="HF LLaMA folder (config.json + safetensors) or hub id")
    direction.add_argument("--to-hf", help="longctx params checkpoint (RUN/checkpoints/final)")
    convert.add_argument("--out", required=True, help="where to write the converted checkpoint")
    convert.add_argument("--dtype", default="float32",
                         help="dtype of the written weights, both directions: float32, bfloat16 or float16")
    convert.add_argument("--tokenizer", metavar="SPEC", help="with --to-hf: the tokenizer written beside the weights "
                         "(default: the one the run's training shards record)")

    add_generate_parser(commands)

    from training.plan_cli import add_plan_parser

    add_plan_parser(commands)

    from inspection.cli import add_inspect_parser

    add_inspect_parser(commands)

    from evals.loss_cli import add_loss_arguments
    from evals.niah_cli import add_niah_arguments
    from evals.report import add_report_arguments
    from evals.ruler_cli import add_ruler_arguments

    evaluate = commands.add_parser("eval", help="evaluate a model (needle in a haystack, RULER, loss by position)")
    evals = evaluate.add_subparsers(dest="eval_command", required=True)
    add_niah_arguments(evals.add_parser("niah", help="needle in a haystack over context lengths x depths, as in LWM"))
    add_ruler_arguments(evals.add_parser("ruler", help="RULER's 13 long-context tasks over lengths, with the effective length"))
    add_loss_arguments(evals.add_parser("loss-by-position", help="mean next-token loss per position bucket over a stage's rows"))
    add_report_arguments(evals.add_parser("report", help="several eval output folders side by side: a table and combined charts"))
    return parser


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, console=Console(stderr=True))],
    )
    logging.getLogger("longctx").setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every file it writes


def _print_on_process_zero(print_fn, *args) -> None:
    """Every process of a multi-host run returns the same results; one of them prints them."""
    import jax

    if jax.process_index() == 0:
        print_fn(*args)


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the command `args` came from (`eval niah`'s for an eval), so that an error
    prints that command's usage line (`usage: longctx train ...`), not the top-level one."""
    found = parser
    for dest in ("command", "eval_command"):
        name = getattr(args, dest, None)
        commands = [a for a in found._actions if isinstance(a, argparse._SubParsersAction)]
        if not name or not commands or name not in commands[0].choices:
            break
        found = commands[0].choices[name]
    return found


def main(argv: list[str] | None = None) -> int:
    prefer_cpu_without_accelerators()  # before any command imports JAX
    top = _parser()
    args, extra = top.parse_known_args(argv)
    parser = _command_parser(top, args)  # every error below is the command's
    if extra and args.command not in DATA_JOBS:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _setup_logging(args.verbose)
    console = Console(width=None if sys.stdout.isatty() else 120)

    if args.command in DATA_JOBS:
        from pipelines.launch import ConfigError
        from pipelines.options import FlagError, check_job_flags, job_pipeline_options
        from pipelines.summary import print_summary

        job = DATA_JOBS[args.command]
        argv = list(sys.argv[1:] if argv is None else argv)
        flags = argv[argv.index(args.command) + 1 :]
        try:
            # Beam would drop a flag it does not know and run with the default: refuse it first.
            check_job_flags(job.config, flags)
        except FlagError as err:
            parser.error(f"{args.command}: {err}")
        try:
            # One PipelineOptions holds the whole command line: our options subclass and Beam's own.
            options = job_pipeline_options(flags)
            config = job.config_from(options)
            manifest = job.run(config, options)
        except ConfigError as err:
            parser.error(str(err))
        except ValueError as err:  # pydantic validation, bad YAML
            parser.error(str(err))
        return print_summary(manifest, config.output, console)
    elif args.command == "train":
        from training.config import TrainConfig
        from training.summary import print_training_summary
        from training.train import ConfigMismatch, train

        try:
            result = train(config_from_args(TrainConfig, args))
        except (ConfigMismatch, ValueError) as err:
            parser.error(str(err))
        _print_on_process_zero(print_training_summary, [result], console)
    elif args.command == "train-stages":
        from training.summary import print_training_summary
        from training.train import ConfigMismatch, load_stage_plan, train_stages

        try:
            plan = load_stage_plan(args.plan)
            if args.out:
                plan = plan.model_copy(update={"out": args.out})
            after = None
            if plan.eval is not None:
                from evals.stage_eval import EvalSection, check_stages, evaluate_stage

                from pydantic import ValidationError

                from curation.config_errors import validation_line

                try:  # a typo stops the plan before stage 1 trains, in one line
                    section = EvalSection.model_validate(plan.eval)
                except ValidationError as err:
                    raise ValueError(f"{args.plan}: {validation_line(err, lambda loc: ('eval', *loc), lambda place: list(EvalSection.model_fields) if place == ('eval',) else [])}") from None
                check_stages(section, [(name, config.seq_len, config.data) for name, config in plan.stage_configs()])
                after = lambda name, config: evaluate_stage(config, section, log=console.print)  # noqa: E731
            results = train_stages(plan, after)
        except (ConfigMismatch, ValueError) as err:  # a bad plan, unfinished data, a damaged checkpoint
            parser.error(str(err))
        _print_on_process_zero(print_training_summary, results, console)
    elif args.command == "convert":
        from training import checkpoint as ckpt
        from training.hf import check_convert_out, check_weight_dtype, export_checkpoint, load_hf_llama

        try:  # an integer dtype would write every weight as zero; a typo would fail after --out is made
            check_weight_dtype(args.dtype)
        except ValueError as err:
            parser.error(str(err))
        if args.from_hf:
            if args.tokenizer:
                parser.error("--tokenizer goes with --to-hf")
            try:
                check_convert_out(args.out, "params")  # before the weights are read
                # --dtype as transformers' torch_dtype: the weights are stored (and the model runs) in it.
                config, params = load_hf_llama(args.from_hf, args.dtype)
            except ValueError as err:  # not a model folder, an unreachable hub id (training.hf.ModelPathError), --out
                parser.error(str(err))
            path = ckpt.save_params(args.out, config, params)
        else:
            try:
                path = export_checkpoint(args.to_hf, args.out, args.dtype, tokenizer=args.tokenizer)
            except ValueError as err:  # not a params checkpoint, --out, a tokenizer that is not the training data's
                parser.error(str(err))
        console.print(f"wrote {path}")
    elif args.command == "generate":
        from training.generate_cli import run_generate

        return run_generate(args, console, parser)
    elif args.command == "plan":
        from training.plan_cli import run_plan

        return run_plan(args, console)
    elif args.command == "inspect":
        from inspection.cli import run_inspect

        return run_inspect(args, console)
    elif args.command == "eval":
        try:
            if args.eval_command == "ruler":
                from evals.ruler_cli import run_ruler

                return run_ruler(args, console)
            if args.eval_command == "report":
                from evals.report import run_report

                return run_report(args, console)
            if args.eval_command == "loss-by-position":
                from evals.loss_cli import run_loss_by_position

                return run_loss_by_position(args, console)
            from evals.niah_cli import run_niah

            return run_niah(args, console)
        except (ValueError, FileNotFoundError) as err:
            parser.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
