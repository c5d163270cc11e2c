"""Every command of README.md's fenced blocks is either run here, for real, or skipped with a
stated reason; the commands are read from README.md itself, so the two cannot drift.

Picked: the lines (backslash continuations joined, `# comments` dropped) of fenced blocks other
than ```python / ```yaml whose first word, after `VAR=value` prefixes, is longctx, make, gcloud
or srun. Skipped: those needing a GPU/TPU, a cluster, a cloud bucket, or files the user supplies
(placeholders); `test_every_readme_command_is_classified` asserts the exact set of skip reasons,
so a new README command must be classified here. Run: the rest, in README order (later commands
use earlier outputs), in a temporary folder holding links to the repo's data/ and configs/, with
`python -m longctx` for `longctx`. Too slow for CI as written, some get a CI-size override
appended (CI_OVERRIDES, each with its reason). `make demo` runs its Makefile recipe (the install
step is the venv this test already runs in). A few commands whose work other tests already run
(a 2-process books job, the demo's training, SmolLM2 NIAH) are only *checked* in CI: parsed by
the real `longctx` parser, their flags checked and their config built, as the command would
(VALIDATE_IN_CI); `LONGCTX_README_FULL=1` runs those for real too (about 8 minutes on 2 cores).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PICKED = {"longctx", "make", "gcloud", "srun"}
ENV_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Command:
    line: int  # README line of the command's first line
    text: str  # continuations joined, comment dropped
    argv: tuple[str, ...]  # without VAR=value prefixes

    @property
    def where(self) -> str:
        return f"README.md:{self.line}: `{self.text}`"


def readme_commands(text: str) -> list[Command]:
    """The command lines of the fenced blocks (see the module docstring for which)."""
    commands: list[Command] = []
    fence: str | None = None
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else stripped[3:].strip()
            pending = []
            continue
        if fence is None or fence in ("python", "yaml"):
            continue
        if not pending:
            start = number
        pending.append(stripped[:-1] if stripped.endswith("\\") else stripped)
        if stripped.endswith("\\"):
            continue
        joined, pending = " ".join(p.strip() for p in pending if p.strip()), []
        try:
            words = shlex.split(joined, comments=True)
        except ValueError:  # an unbalanced quote: shell, not a command line we pick
            continue
        argv = words[next((i for i, w in enumerate(words) if not ENV_ASSIGN.match(w)), len(words)):]
        if argv and argv[0] in PICKED:
            commands.append(Command(start, shlex.join(words), tuple(argv)))
    return commands


PLACEHOLDERS = ("path/to/", "LLAMA2_DIR", "VQGAN_DIR", "TRAIN_TOKENIZER", "TOKENIZER", "...", "more/", "pairs/",
                "data/books/", "dev-v2.0.json", "clip.mp4")
LONG_STAGE_RUNS = ("runs/stage-32k", "runs/32k", "runs/text-1m", "runs/stage-4k", "runs/plan/")

# Reasons a README command is not run here (the test asserts how many commands each covers).
GS = "needs a gs:// bucket (Google Cloud)"
PLACEHOLDER = "needs files the user supplies (a placeholder such as path/to/, VQGAN_DIR, TOKENIZER)"
CLUSTER = "runs on a TPU pod or GPU cluster (gcloud, srun, a JobSet's environment)"
TPU_PLAN = "trains a TPU-scale stage plan (32K..1M tokens)"
LONG_CHECKPOINT = "needs a long-context checkpoint trained on accelerators (runs/stage-32k, runs/32k, ...)"
NO_MAKER = "needs out/books/s128, which no README command writes"
WHOLE_SUITE = "runs the whole test suite, this test included"
EXPECTED_SKIPS = Counter({GS: 5, PLACEHOLDER: 12, CLUSTER: 3, TPU_PLAN: 2, LONG_CHECKPOINT: 5, NO_MAKER: 1, WHOLE_SUITE: 1})


def skip_reason(cmd: Command) -> str | None:
    """Why a README command cannot run here (no accelerator, no network, no user files), or None."""
    args, text = cmd.argv, cmd.text
    if "out/books/s128" in text:
        return NO_MAKER
    if args[0] in ("gcloud", "srun") or any("$" in a for a in args):
        return CLUSTER
    if "gs://" in text:
        return GS
    if args[:2] == ("make", "test"):
        return WHOLE_SUITE
    if any(p in text for p in PLACEHOLDERS) or any(a in ("C", "T", "V", "OUT", "PATH") for a in args):
        return PLACEHOLDER
    if args[:2] == ("longctx", "train-stages"):
        return TPU_PLAN
    if any(r in a for a in args for r in LONG_STAGE_RUNS):
        return LONG_CHECKPOINT
    return None


# CI-size overrides appended to a README command (keyed by the start of its text), and why.
CI_OVERRIDES: dict[str, tuple[list[str], str]] = {
    "longctx train --config configs/train/tiny-4k.yaml": (["--steps", "2"], "40 steps of a toy model take minutes on 2 cores"),
    "longctx qa --input data/sample/books.jsonl.gz": (["--max-chunks", "3"], "the extractive QA of all 7 novels is slow for CI"),
    "longctx plan ": (["--estimate"], "compiling a stage (or a mesh search) for a TPU slice takes minutes on a CPU"),
    "longctx eval niah --format lwm": (["--lengths", "1k", "--depths", "1"], "15 NIAH cells of SmolLM2 take minutes on a CPU"),
    "longctx eval niah --hf-model": (["--lengths", "1k", "--depths", "1"], "15 NIAH cells of SmolLM2 take minutes on a CPU"),
}
# The train step of `make demo`'s recipe, same reason.
MAKE_DEMO_OVERRIDE = (["--steps", "2"], "20 steps of a 4K-token toy model take over a minute on 2 cores")

# README commands that fail as written, with the fix proposed: each must still fail here; once
# the README is fixed, remove its entry.
KNOWN_BROKEN: dict[str, str] = {}

# Checked, not run, in CI (unless LONGCTX_README_FULL=1): the same work runs in other tests, and
# running it here again would cost minutes of the CI budget.
VALIDATE_IN_CI: dict[str, str] = {
    "longctx books --input data/sample/books.jsonl.gz --output out/tiny": "a 2-process DirectRunner books job (tests/test_rerun.py runs one)",
    "longctx eval niah": "SmolLM2 through transformers (tests/test_niah.py runs it)",
    "longctx eval loss-by-position --hf-model": "SmolLM2 through transformers over the seven novels (tests/test_evals_loss_hf.py "
                                                "runs a transformers model on raw books)",
}
FULL = os.environ.get("LONGCTX_README_FULL") == "1"


def validate_argv(args: list[str], cwd: Path) -> list[str]:
    """What running `longctx ARGS` would check before working: the parser, a data job's flags
    against its config and Beam's options, and the config built from them. Returns the failures."""
    from longctx.cli import _parser
    from pipelines.jobs import DATA_JOBS
    from pipelines.options import check_job_flags, job_pipeline_options

    here = os.getcwd()
    os.chdir(cwd)  # relative --config paths resolve as for the user
    try:
        parsed, extra = _parser().parse_known_args(args[1:])
        if parsed.command in DATA_JOBS:
            job = DATA_JOBS[parsed.command]
            flags = args[2:]
            check_job_flags(job.config, flags)
            job.config_from(job_pipeline_options(flags))
        elif extra:
            return [f"unrecognized arguments: {extra}"]
        elif parsed.command == "train":  # the config train() gets, and the two settings it cannot do without
            from pipelines.config import config_from_args
            from training.config import TrainConfig

            config = config_from_args(TrainConfig, parsed)
            if not (config.data and config.out):
                return [f"{' '.join(args)}: a training run needs data and out"]
    except (SystemExit, ValueError) as err:
        return [f"{' '.join(args)}: {type(err).__name__}: {err}"]
    finally:
        os.chdir(here)
    return []


def overrides_for(cmd: Command) -> tuple[list[str], str]:
    for prefix, value in CI_OVERRIDES.items():
        if cmd.text.startswith(prefix):
            return value
    return [], ""


def longctx_argv(args: list[str] | tuple[str, ...]) -> list[str]:
    """`longctx ...` as this interpreter's `python -m longctx ...` (the same entry point as the script)."""
    return [sys.executable, "-m", "longctx", *args[1:]]


def make_recipe(target: str) -> list[list[str]]:
    """The recipe lines of a Makefile target, with `$(VENV)/bin/longctx` as `longctx`."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append([w.replace("$(VENV)/bin/longctx", "longctx") for w in shlex.split(line.strip())])
    return recipe


def run_argv(argv: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def run_command(cmd: Command, cwd: Path) -> list[str]:
    """Runs one README command; returns the failures (empty when it worked)."""
    failures = []
    if cmd.argv[:2] == ("make", "demo"):
        steps = []
        for words in make_recipe("demo"):
            if words[:2] == ["rm", "-rf"]:  # the recipe's own clean-up of the previous demo run
                for path in words[2:]:
                    shutil.rmtree(cwd / path, ignore_errors=True)
                continue
            assert words[0] == "longctx", f"Makefile demo: an unexpected recipe line {words}"
            extra = MAKE_DEMO_OVERRIDE[0] if words[1] == "train" else []
            steps.append(longctx_argv(words) + extra)
    else:
        if not FULL and any(cmd.text.startswith(prefix) for prefix in VALIDATE_IN_CI):
            return [f"{cmd.where}: {problem}" for problem in validate_argv(list(cmd.argv) + overrides_for(cmd)[0], cwd)]
        steps = [longctx_argv(cmd.argv) + overrides_for(cmd)[0]]
    for argv in steps:
        proc = run_argv(argv, cwd)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
            failures.append(f"{cmd.where} exited {proc.returncode}:\n{tail}")
    return failures


def test_readme_commands_are_found_with_their_line_numbers():
    commands = readme_commands(README.read_text())
    text = README.read_text().splitlines()
    assert len(commands) >= 30
    for cmd in commands:  # each command starts on its own README line, continuations joined
        assert text[cmd.line - 1].strip().split("\\")[0].split()[0] in PICKED | {"XLA_FLAGS=--xla_force_host_platform_device_count=4"}
        assert "\\" not in cmd.argv and "#" not in cmd.argv
    demo = [c for c in commands if c.argv[:2] == ("make", "demo")]
    assert len(demo) == 1 and demo[0].line < 10


def test_every_readme_command_is_classified():
    commands = readme_commands(README.read_text())
    reasons = Counter(r for r in map(skip_reason, commands) if r is not None)
    assert reasons == EXPECTED_SKIPS, "a README command was added or changed: classify it here"
    to_run = [c for c in commands if skip_reason(c) is None]
    assert [c.argv[0] for c in to_run if c.argv[0] != "longctx"] == ["make"]  # only `make demo`
    # Every override, known-broken and check-only entry still matches a README command that is run.
    for prefix in list(CI_OVERRIDES) + list(KNOWN_BROKEN) + list(VALIDATE_IN_CI):
        assert any(c.text.startswith(prefix) for c in to_run), f"no README command to run starts with {prefix!r}"


# What a cluster's environment fills in for the README's $VARIABLES, to check those commands here.
CLUSTER_ENV = {"JOBSET_NAME": "longctx", "NUM_PROCESSES": "2", "JOB_COMPLETION_INDEX": "0"}


def cluster_longctx_argv(cmd: Command) -> list[str]:
    """The `longctx ...` a cluster command runs on each host: gcloud's --command string or srun's
    program, with the cluster's $VARIABLES filled in (CLUSTER_ENV; an unknown one fails)."""
    args = list(cmd.argv)
    if args[0] == "gcloud":
        args = shlex.split(args[args.index("--command") + 1])
    start = next(i for i, a in enumerate(args) if a.endswith("bin/longctx") or (a == "longctx" and i == 0))

    def fill(word: str) -> str:
        return re.sub(r"\$\{?([A-Z_]+)\}?", lambda m: CLUSTER_ENV[m.group(1)], word)

    return ["longctx", *map(fill, args[start + 1 :])]


def test_cluster_commands_parse_and_build_their_config():
    """The TPU pod, SLURM and GKE commands cannot run here, but each host's `longctx ...` must be a
    command that parses and builds its config (the GKE one lacked --data and --out)."""
    commands = [c for c in readme_commands(README.read_text()) if skip_reason(c) == CLUSTER]
    assert len(commands) == EXPECTED_SKIPS[CLUSTER]
    failures = [f"{cmd.where}: {problem}" for cmd in commands for problem in validate_argv(cluster_longctx_argv(cmd), ROOT)]
    assert not failures, "\n".join(failures)


def test_longctx_help_lists_every_readme_subcommand(tmp_path):
    proc = run_argv(longctx_argv(["longctx", "--help"]), tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    used = {c.argv[1] for c in readme_commands(README.read_text()) if c.argv[0] == "longctx"}
    missing = [sub for sub in sorted(used) if sub not in proc.stdout]
    assert not missing, f"`longctx --help` does not list {missing}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder where the README's relative paths resolve: links to data/ and configs/; outputs land here."""
    folder = tmp_path_factory.mktemp("readme")
    for name in ("data", "configs"):
        (folder / name).symlink_to(ROOT / name, target_is_directory=True)
    return folder


def test_readme_commands_run(workdir):
    commands = [c for c in readme_commands(README.read_text()) if skip_reason(c) is None]
    failures = []
    for cmd in commands:
        broken = next((fix for prefix, fix in KNOWN_BROKEN.items() if cmd.text.startswith(prefix)), None)
        found = run_command(cmd, workdir)
        if broken is not None:
            if not found:
                failures.append(f"{cmd.where} works now: remove it from KNOWN_BROKEN ({broken})")
            continue
        failures.extend(found)
    assert not failures, "\n\n".join(failures)
    # The outputs the later commands relied on are real.
    assert (workdir / "out/demo/books/manifest.json").is_file()
    assert (workdir / "out/demo/books/inspect").is_dir()
    assert (workdir / "runs/tiny/checkpoints/final").exists()
    assert (workdir / "out/qa/manifest.json").is_file() and (workdir / "out/demo/run/metrics.jsonl").is_file()
    assert FULL or not (workdir / "out/tiny").exists()  # checked, not run, in CI
    assert not FULL or (workdir / "out/tiny/manifest.json").is_file()


def test_the_ci_check_refuses_what_running_would_refuse(workdir):
    """The check-only path is not a pass-through: a mistyped flag, key or value fails it."""
    assert validate_argv(["longctx", "books", "--input", "data/sample/books.jsonl.gz", "--output", "out/x",
                          "--stages", "4k", "--tokenizer", "package:mistral_common/data/tokenizer.model.v1"], workdir) == []
    assert validate_argv(["longctx", "books", "--input", "x", "--stagez", "4k"], workdir)
    assert validate_argv(["longctx", "books", "--config", "configs/books/demo.yaml", "--min-tail-tokens", "many"], workdir)
    assert validate_argv(["longctx", "eval", "niah", "--hf-model", "m", "--out", "o", "--dephts", "3"], workdir)
