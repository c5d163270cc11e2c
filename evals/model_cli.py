"""The model flags every `longctx eval` command shares: which model (our JAX checkpoint or a
transformers model), how to run it (sequence-parallel devices, ring chunk, torch device), what to
call it and where to write."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_model_arguments(parser: argparse.ArgumentParser, hf_model_help: str = "") -> None:
    """--checkpoint | --hf-model (one required), --sp, --chunk, --device, --name, --out."""
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="longctx params checkpoint (RUN/checkpoints/final) or HF LLaMA folder, "
                                            "run with our JAX model (KV cache, sequence-parallel prefill)")
    model.add_argument("--hf-model", help="any local transformers causal LM folder, or package:DIST/model.gguf" + hf_model_help)
    parser.add_argument("--sp", type=int, default=1, help="sequence-parallel devices for the prefill and the KV cache (--checkpoint)")
    parser.add_argument("--chunk", type=int, default=512, help="ring attention query/key chunk (--checkpoint)")
    parser.add_argument("--device", default="cpu", help="torch device for --hf-model")
    parser.add_argument("--name", help="model name in the outputs (default: from the path)")
    parser.add_argument("--out", required=True, help="output folder")


def model_name(args: argparse.Namespace) -> str:
    """--name, else the model's folder name (RUN/checkpoints/final names the run; a GGUF its stem)."""
    if args.name:
        return args.name
    path = Path(args.checkpoint or args.hf_model)
    if path.name == "final" and path.parent.name == "checkpoints":
        return path.parents[1].name
    return path.stem if path.suffix == ".gguf" else path.name
