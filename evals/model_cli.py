"""The model flags every `longctx eval` command shares: which model (our JAX checkpoint or a
transformers model), how to run it (sequence-parallel devices, ring chunk, torch device, prompts
per batch), what to call it and where to write; and loading that model with its tokenizer."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_BATCH_SIZE = 8


def add_model_arguments(parser: argparse.ArgumentParser, hf_model_help: str = "") -> None:
    """--checkpoint | --hf-model | --endpoint (one required), --endpoint-model, --api-key-env, --sp,
    --chunk, --device, --name, --out."""
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="longctx params checkpoint (RUN/checkpoints/final) or HF LLaMA folder, "
                                            "run with our JAX model (KV cache, sequence-parallel prefill)")
    model.add_argument("--hf-model", help="any local transformers causal LM folder, or package:DIST/model.gguf" + hf_model_help)
    model.add_argument("--endpoint", metavar="URL",
                       help="OpenAI-compatible completions server (e.g. vLLM: http://127.0.0.1:8000); needs --tokenizer, "
                            "the served model's, to fit the prompts")
    parser.add_argument("--endpoint-model", help="model name to request from --endpoint (default: the one it serves)")
    parser.add_argument("--api-key-env", metavar="VAR", help="environment variable holding --endpoint's API key")
    parser.add_argument("--sp", type=int, default=1, help="sequence-parallel devices for the prefill and the KV cache (--checkpoint)")
    parser.add_argument("--chunk", type=int, default=512, help="ring attention query/key chunk (--checkpoint)")
    parser.add_argument("--device", default="cpu", help="torch device for --hf-model")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="prompts decoded together (--checkpoint, --hf-model; greedy answers are the same as one "
                             "at a time; default %(default)s)")
    parser.add_argument("--name", help="model name in the outputs (default: from the path)")
    parser.add_argument("--out", required=True, help="output folder")


def model_name(args: argparse.Namespace) -> str:
    """--name, else the model's folder name (RUN/checkpoints/final names the run; a GGUF its stem)."""
    if args.name:
        return args.name
    if getattr(args, "endpoint", None):
        return args.endpoint_model or "endpoint"
    path = Path(args.checkpoint or args.hf_model)
    if path.name == "final" and path.parent.name == "checkpoints":
        return path.parents[1].name
    return path.stem if path.suffix == ".gguf" else path.name


def model_weights_saved(args: argparse.Namespace) -> str | None:
    """When the --checkpoint's or local --hf-model's weights were saved (training.checkpoint.
    weights_saved), read before they load; None for an --endpoint or a hub id."""
    if getattr(args, "endpoint", None):
        return None
    if args.hf_model:
        from curation.hf_models import weights_written

        return weights_written(args.hf_model)
    from training.checkpoint import weights_saved

    return weights_saved(args.checkpoint)


def endpoint_generator(args: argparse.Namespace, name: str):
    """The --endpoint model with its tokenizer: (tokenizer, evals/endpoint.py EndpointGenerator)."""
    from evals.generators import load_niah_tokenizer
    from evals.endpoint import EndpointClient, EndpointGenerator, api_key_from_env

    if not args.tokenizer:
        raise ValueError("--endpoint needs --tokenizer (the served model's, e.g. its Hugging Face folder) to fit "
                         "prompts to their token lengths")
    tokenizer = load_niah_tokenizer(args.tokenizer)
    client = EndpointClient(args.endpoint, args.endpoint_model, api_key_from_env(args.api_key_env))
    return tokenizer, EndpointGenerator(client, tokenizer, name if args.name else str(client.model))


def _load_generator(args: argparse.Namespace, name: str, max_length: int, note: Callable[[str], None],
                    tokenizer: Any) -> Any:
    """The generator of --hf-model or --checkpoint, with `tokenizer` (`model_tokenizer`'s; its
    eos ids join a --hf-model's own). `note` gets a warning when `max_length` exceeds the
    checkpoint's max_position_embeddings. `prepare_model` checked the flags and took --endpoint."""
    from evals.generators import FlaxGenerator, HFGenerator

    if args.hf_model:
        generator = HFGenerator(args.hf_model, device=args.device, name=name)
        generator.eos_ids = tuple(dict.fromkeys(generator.eos_ids + tokenizer.eos_ids))
        return generator
    from training.checkpoint import load_any_params

    config, params = load_any_params(args.checkpoint)  # a run or data folder, a missing path: one line
    if max_length > config.max_position_embeddings:
        note(f"lengths up to {max_length} exceed the model's max_position_embeddings ({config.max_position_embeddings})")
    return FlaxGenerator(config, params, tokenizer.eos_ids, sp=args.sp, name=name, q_chunk=args.chunk,
                         kv_chunk=args.chunk)


def model_tokenizer(args: argparse.Namespace) -> Any:
    """The tokenizer of --hf-model or --checkpoint, without loading the weights: --tokenizer (for
    a checkpoint, refused when it is not the one its training data was made with), else the
    model's own (a --hf-model's, a Hugging Face --checkpoint folder's tokenizer files)."""
    from evals.generators import folder_tokenizer, load_niah_tokenizer

    if args.hf_model:
        from curation.hf_models import resolve_generator

        folder, _ = resolve_generator(args.hf_model)
        return load_niah_tokenizer(args.tokenizer or folder)
    spec = args.tokenizer or folder_tokenizer(args.checkpoint)
    if not spec:
        raise ValueError("--checkpoint needs --tokenizer (the one the model was trained with); only a Hugging Face "
                         "model folder with its own tokenizer files can do without")
    from curation.tokenize import load_tokenizer
    from training.hf import check_checkpoint_tokenizer

    tokenizer = load_niah_tokenizer(spec)
    if args.tokenizer:  # another tokenizer than the training data's would score text read with other ids
        check_checkpoint_tokenizer(args.checkpoint, load_tokenizer(spec)[1], spec)
    return tokenizer


def prepare_model(args: argparse.Namespace, name: str, max_length: int,
                  note: Callable[[str], None]) -> tuple[Any, str, Callable[[], Any]]:
    """(tokenizer, model name, load) of --endpoint, --hf-model (its own tokenizer unless
    --tokenizer) or --checkpoint, where `load()` returns the generator: what can be refused
    from the tokenizer (a prompt that cannot fit, a results folder of other settings) is found
    before the weights load. An --endpoint is asked for its model's name now (no weights to load)."""
    check_at_least_one("--batch-size", getattr(args, "batch_size", 1))
    check_at_least_one("--chunk", getattr(args, "chunk", 1))  # 0 would divide the prefill buffer by zero
    if getattr(args, "out", None):  # a file there stopped the run with a traceback when results were written
        check_results_folder(args.out)
    if getattr(args, "endpoint", None):
        tokenizer, generator = endpoint_generator(args, name)
        return tokenizer, generator.name, lambda: generator
    if getattr(args, "hf_model", None):  # torch said a bad one with a traceback from model.to(device)
        check_torch_device(args.device)
    tokenizer = model_tokenizer(args)
    return tokenizer, name, lambda: _load_generator(args, name, max_length, note, tokenizer)


def check_at_least_one(flag: str, value: int | None) -> None:
    """Refuse (ValueError, one line) a count flag below 1; None is an unset flag, whose default applies."""
    if value is not None and value < 1:
        raise ValueError(f"{flag} must be at least 1, got {value}")


def check_results_folder(out: str, flag: str = "--out") -> None:
    """Refuse (ValueError, one line) an output folder that is a file, or lies under one: found
    before the model loads, not when the results are written. Nothing is created."""
    path = Path(out).expanduser()
    for place in (path, *path.parents):
        if place.exists():
            if not place.is_dir():
                where = "" if place == path else f" ({place} is a file)"
                raise ValueError(f"{flag} {out}: not a folder{where}")
            return


def check_torch_device(device: str, flag: str = "--device") -> None:
    """Refuse (ValueError, one line) a torch device this machine cannot use (a misspelt name, no
    CUDA, an index past the devices there), before the model loads; torch would raise it as a
    RuntimeError or AssertionError from deep in `model.to(device)`."""
    import torch

    try:
        where = torch.device(device)
        if where.type == "cuda" and torch.cuda.is_available() and (where.index or 0) >= torch.cuda.device_count():
            raise RuntimeError(f"this machine has {torch.cuda.device_count()} CUDA device(s)")
        torch.empty(0, device=where)
    except (RuntimeError, AssertionError, TypeError, ValueError) as err:
        why = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f"{flag} {device!r} cannot be used on this machine: {why[:300]}") from None


def check_hf_model_path(model: str, flag: str = "--hf-model") -> None:
    """Refuse (ValueError, one line) an --hf-model that is plainly a local path but not a model:
    not there, a folder without config.json, a file that is not a GGUF model
    (curation.hf_models.local_generator_problem, as `qa --backend transformers` judges it). A hub
    id or package: spec is left to the loader."""
    from curation.hf_models import is_local_model_path, local_generator_problem

    if model.startswith("package:") or "://" in model or not is_local_model_path(model):
        return
    problem = local_generator_problem(model)
    if problem:
        raise ValueError(f"{flag} {model}: {problem} (pass a transformers model folder, a .gguf file or a hub id)")


def parse_lengths_flag(spec: str) -> list[int]:
    """--lengths (`1k,2k,4k` or `1k..32k:8`, evals.niah.parse_lengths), with what is wrong said as
    a fault of the flag: none given, or a part that is not a length."""
    from evals.niah import parse_lengths

    try:
        lengths = parse_lengths(spec)
    except ValueError as err:
        raise ValueError(f"--lengths {spec!r}: {err}") from None
    if not lengths:
        raise ValueError(f"--lengths {spec!r} names no length: give token counts such as 1k,2k,4k or 1k..32k:8")
    return lengths


def parse_depths_flag(spec: str) -> list[float]:
    """--depths (a count, or percents `0,25,50`, evals.niah.parse_depths), with what is wrong said
    as a fault of the flag."""
    from evals.niah import parse_depths

    want = "a count of depths spread evenly over 0..100 % (e.g. 5) or percents such as 0,25,50"
    try:
        depths = parse_depths(spec)
    except ValueError as err:
        text = str(err)
        reason = text if text.startswith(("the number", "depths must")) else f"not {want}"
        raise ValueError(f"--depths {spec!r}: {reason}") from None
    if not depths:
        raise ValueError(f"--depths {spec!r} names no depth: give {want}")
    return depths
