"""`longctx plan` refuses in one line what it used to ignore or misreport: --search with a fixed
--mesh/--remat (the search chose its own anyway), --max-compiles without --search, --layers
where nothing is compiled (the JSON still said the full depth, estimated), a TPU topology of the
wrong form (reported as a missing libtpu), and a --set value that fails validation (blamed on the
--config file). Its tables printed into a pipe keep their natural width instead of 120 columns
with every column cut to `…`."""

from __future__ import annotations

import json

import pytest

from longctx.cli import main
from tests.conftest import REPO, cli_error
from training.plan_targets import libtpu_available, resolve_target, topology_problem

TINY = str(REPO / "configs" / "train" / "tiny-4k.yaml")
FORMS = ("give GENERATION:AxBxC such as v5p:4x4x8 or v4:2x2x1, or GENERATION:AxB such as v5e:2x4 or v6e:4x4, "
         "the first two sizes even (a TPU host holds 2x2 chips)")


def _error(argv: list[str], capsys) -> str:
    lines = cli_error(["plan", "--config", TINY, *argv], capsys)
    assert capsys.readouterr().out == ""
    return lines[-1].removeprefix("longctx plan: error: ")


@pytest.mark.parametrize("argv, message", [
    (["--search", "--mesh", "dp=1,fsdp=8,tp=1,sp=8", "--remat", "none"],
     "--mesh dp=1,fsdp=8,tp=1,sp=8 and --remat none with --search: the search chooses each stage's mesh and remat "
     "itself; drop --mesh and --remat to search, or drop --search to plan that layout"),
    (["--search", "--remat", "full"],
     "--remat full with --search: the search chooses each stage's mesh and remat itself; drop --remat to search, or "
     "drop --search to plan that layout"),
    (["--max-compiles", "3"],
     "--max-compiles 3 needs --search: it caps the compiles of the layout search (without it each stage compiles "
     "once, or twice with --layers N1,N2)"),
    (["--topology", "gpu:h100x1", "--layers", "1,2"],
     "--layers 1,2 extrapolates from two compiles, but gpu:h100x1 is estimated, not compiled (the estimate covers "
     "every layer): drop --layers, or give one depth to estimate a cut model"),
    (["--topology", "local", "--estimate", "--layers", "1,2"],
     "--layers 1,2 extrapolates from two compiles, but local is estimated (--estimate), not compiled (the estimate "
     "covers every layer): drop --layers, or give one depth to estimate a cut model"),
    (["--topology", "gpu:h100x1", "--search", "--layers", "1"],
     "--layers 1 with --search: gpu:h100x1 is estimated, not compiled, and the search's estimate judges every layer; "
     "drop --layers"),
    (["--topology", "v5p:3x3x3", "--estimate"],
     f"TPU topology 'v5p:3x3x3': chip grid 3x3x3 has an odd size (3) in its first two dimensions; {FORMS}"),
    (["--topology", "v5p"], f"TPU topology 'v5p': 'v5p' names a TPU generation but no chip grid; {FORMS}"),
    (["--topology", "v5p:4x4x8x"],
     f"TPU topology 'v5p:4x4x8x': chip grid '4x4x8x' is not 2 or 3 positive whole numbers joined by x; {FORMS}"),
    (["--topology", "v5e-8:2x4"],
     f"TPU topology 'v5e-8:2x4': 'v5e-8' is a TPU type name (cores or chips in it), not a generation such as v5p; {FORMS}"),
    (["--set", "global_batch=abc"],
     "--set global_batch=abc: global_batch: Input should be a valid integer, unable to parse string as an integer (got 'abc')"),
    (["--set", "global_bach=2"], "--set global_bach=2: unknown key 'global_bach' (did you mean 'global_batch'?)"),
    (["--set", "model=tooy"], "--set model=tooy: model: unknown preset 'tooy' (did you mean 'toy'?); presets: toy, tiny, "
                              "1b, llama2-7b"),
])
def test_plan_refuses_in_one_line(capsys, argv, message):
    assert _error(argv, capsys) == message


def test_a_mistake_in_the_config_file_still_names_the_file(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text((REPO / "configs" / "train" / "tiny-4k.yaml").read_text().replace("global_batch: 2", "global_batch: abc"))
    lines = cli_error(["plan", "--config", str(config), "--set", "steps=3", "--topology", "gpu:h100x1"], capsys)
    assert lines[-1].endswith("bad.yaml: global_batch: Input should be a valid integer, unable to parse string as an "
                              "integer (got 'abc')") and "--set" not in lines[-1]


@pytest.mark.parametrize("topology", ["v5p:2x2x1", "v5e:2x4", "v6e:2x2", "v5p:4x4x8"])
def test_topologies_of_the_accepted_forms_pass_the_form_check(topology):
    assert topology_problem(topology) is None


def test_v5litepod_is_described_by_libtpu_as_v5e():
    if not libtpu_available():
        pytest.skip("libtpu is not installed (pip install -e '.[dev]' brings it)")
    target = resolve_target("v5litepod:2x2")
    assert target.num_devices == 4 and target.chip.name == "TPU v5e"


def test_max_compiles_with_search_and_one_layer_depth_estimate_still_run(tmp_path, capsys):
    capsys.readouterr()
    assert main(["plan", "--config", TINY, "--topology", "gpu:h100x1", "--search", "--max-compiles", "2"]) == 0
    out = tmp_path / "plan.json"
    assert main(["plan", "--config", TINY, "--topology", "gpu:h100x1", "--layers", "1", "--json", str(out)]) == 0
    stage = json.loads(out.read_text())["stages"][0]
    assert stage["layers"] == 1 and stage["method"] == "estimate"


def test_tables_into_a_pipe_keep_their_width(capsys):
    """The command line's console is 120 columns wide when stdout is not a terminal (as under capsys)."""
    capsys.readouterr()
    assert main(["plan", "--config", TINY, "--topology", "gpu:h100x1"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "…" not in out
    for header in ("mesh dp/fsdp/tp/sp", "state GiB/dev", "model PFLOP/step", "step @MFU"):
        assert header in out
    row = next(line for line in lines if line.startswith("│ tiny-4k "))
    assert "gpu:h100x1" in row and "analytic, +-30%: fits only with that much to spare" in row
    assert max(len(line) for line in lines) > 120
