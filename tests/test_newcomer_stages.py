"""Stage specs as the README writes them: bare names from the ladder (`--stages 4k`), inline
windows with the max optional (`name=L:min`), and one-line errors for anything else."""

from __future__ import annotations

import pytest

from curation.stages import KNOWN_STAGES, LWM_STAGES, Stage, parse_stage_list, stage_rule
from longctx.cli import main
from pipelines.config import ImagesConfig


def test_bare_names_of_the_ladder_resolve():
    stages = parse_stage_list("1k,4k,8k,32k")
    assert [(s.name, s.length) for s in stages] == [("1k", 1024), ("4k", 4096), ("8k", 8192), ("32k", 32_768)]
    # The short rungs have no window (every document feeds them); the LWM rungs keep theirs.
    assert (stages[1].min_tokens, stages[1].max_tokens) == (0, None) and stages[1].accepts(5_000_000)
    assert stages[3] == LWM_STAGES["32k"] and not stages[3].accepts(5_000)


def test_the_readme_images_example_stage_resolves():
    # README: longctx images ... --stages 4k
    config = ImagesConfig.model_validate({"inputs": ["x"], "output": "o", "tokenizer": "t", "vqgan": "v", "stages": ["4k"]})
    assert config.resolved_stages() == [Stage("4k", 4096)]


@pytest.mark.parametrize("spec, window", [
    ("tiny=4096:1000-20000", (1000, 20000)),
    ("tiny=4096:1000-", (1000, None)),
    ("tiny=4096:1000", (1000, None)),  # max optional, as the README says
    ("tiny=4k:1k", (1024, None)),
])
def test_inline_windows_with_the_max_optional(spec, window):
    [stage] = parse_stage_list(spec, KNOWN_STAGES)
    assert (stage.name, stage.length) == ("tiny", 4096)
    assert (stage.min_tokens, stage.max_tokens) == window


@pytest.mark.parametrize("spec, message", [
    ("3k", "unknown stage '3k': known are 1k, 2k, 4k, 8k, 16k, 32k, 128k, 256k, 512k, 1m; or define one as name=L:min-max"),
    ("tiny=4096", "stage 'tiny=4096' is not name=L:min-max (max optional: name=L:min)"),
    ("tiny=4096:lots", "stage 'tiny=4096:lots' is not name=L:min-max"),
    ("tiny=4096:2000-1000", "stage 'tiny': empty window [2000, 1000)"),
])
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(ValueError) as err:
        parse_stage_list(spec)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_cli_accepts_a_bare_name_and_refuses_an_unknown_one_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["images", "--input", "x", "--output", str(tmp_path / "o"), "--tokenizer", "t", "--vqgan", "v", "--stages", "5k"])
    assert err.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unknown stage '5k': known are 1k, 2k, 4k" in last


def test_each_job_shows_the_rule_it_applies():
    assert stage_rule("books", 100_000, 200_000) == "100K-200K"
    assert stage_rule("books", 0, None) == "any length"
    # QA, video and images never apply a window: the summary says what they do instead.
    assert stage_rule("images", 10_000, 100_000) == "pair fits in L"
    assert stage_rule("video", 10_000, 100_000) == "cut to fit L"
    assert stage_rule("qa", 10_000, 100_000) == "cut to fit L"
