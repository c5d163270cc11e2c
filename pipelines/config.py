"""Typed job configs, loaded from YAML and overridden by CLI flags generated from the same fields.

Every field is a config key and a flag (`min_tail_tokens` <-> `--min-tail-tokens`), with the
field's description as the flag's `--help` text, so the two can never drift apart.
"""

from __future__ import annotations

import argparse
import shlex
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, model_validator

from curation.config_errors import read_config_yaml, top_level_keys, validation_line
from curation.manifest import config_hash
from curation.packing import PositionMode
from curation.quality import Languages, QualityRules
from curation.sources import BOOK_FILES
from curation.near_duplicates import banding_problem, suggested_banding
from curation.stages import KNOWN_STAGES, Stage, StagePolicy, catalog_stages, parse_stage_list


# Strict: pydantic would otherwise read YAML `length: true` as 1 (and `4096.0` as 4096).
StageInt = Annotated[int, Strict()]


class StageModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    length: StageInt = Field(gt=0)
    # A token count is never negative: `min_tokens: -5` would read as 0 without a word.
    min_tokens: StageInt = Field(0, ge=0)
    max_tokens: StageInt | None = Field(None, ge=0)


# Keys a data config once took but that only the trainer can honour: the trainer averages text
# and vision loss each over its own positions, so weights folded into a shard's loss_mask cancel.
TRAINER_ONLY_KEYS = ("text_loss_weight", "vision_loss_weight")


def refuse_trainer_keys(data: Any, where: str = "") -> None:
    """A one-line error naming the loss-weight keys a data config sets (they are trainer settings)."""
    found = [key for key in TRAINER_ONLY_KEYS if isinstance(data, dict) and key in data]
    if found:
        raise ValueError(
            f"{where + ': ' if where else ''}{' and '.join(found)} {'is a' if len(found) == 1 else 'are'} trainer "
            f"setting{'s' if len(found) > 1 else ''} (longctx train --text-loss-weight / --vision-loss-weight, or a "
            f"configs/train YAML), not a data job's: remove {'it' if len(found) == 1 else 'them'} from the data config"
        )


class JobConfig(BaseModel):
    """Fields shared by every data job (books, QA, video)."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[str] = Field(default_factory=list, description="input files, folders or globs (local path or fsspec URL such as gs://b/x/*.jsonl.gz); repeatable", json_schema_extra={"flag": "--input"})
    output: str = Field("", description="output folder (local path or fsspec URL): STAGE/train-*.arrow, rejects/, manifest.json")
    overwrite: bool = Field(False, description="redo a finished job (its manifest.json exists); without it a rerun is a no-op")
    sample: int | None = Field(None, ge=1, description="dry run on a deterministic sample of N input records (the N first by a hash of their content: the same records from any folder)")
    tokenizer: str = Field("", description="training tokenizer: tokenizer.json, SentencePiece .model, folder, package:DIST/path, or hub id")
    stages: list[str] = Field(default_factory=lambda: ["32k"], description="stages to build: names from stage_catalog or the built-in ladder (1k,2k,4k,8k,16k: no length window; 32k,128k,256k,512k,1m: the LWM-Text windows) or inline name=L:min-max (max optional)")
    stage_catalog: dict[str, StageModel] = Field(default_factory=dict, description="extra named stages (YAML only): name -> {length, min_tokens, max_tokens}")
    stage_policy: StagePolicy = Field(StagePolicy.ALL, description="a document feeds all matching stages, or only the first")
    min_tail_tokens: int = Field(1024, ge=0, description="a long document's last partial window is packed if it has at least this many tokens, else dropped")
    positions: PositionMode = Field(PositionMode.DOCUMENT, description="position ids restart per packed document, or run 0..L-1 across the row")
    shuffle_seed: int = Field(0, description="seed of the deterministic row order within a stage")
    pack_group_tokens: int = Field(1 << 25, gt=0, description="a stage is planned in packing groups of at most about this many tokens (a group's window references, not its tokens, meet on one worker)")
    shard_target_bytes: int = Field(256 * 1024 * 1024, gt=0, description="target size of one shard file in bytes")
    add_bos: bool = Field(True, description="prepend the tokenizer's BOS to each document")
    add_eos: bool = Field(True, description="append the tokenizer's EOS to each document")
    text_field: str = Field("text", description="JSONL field / Parquet column holding the text")
    id_field: str = Field("id", description="JSONL field / Parquet column holding the record id (default: file:line)")
    input_format: Literal["auto", "jsonl", "parquet", "text"] = Field("auto", description=f"input format; auto infers it from the file extension: {BOOK_FILES}")
    read_split_bytes: int = Field(64 << 20, gt=0, description="an uncompressed JSONL or Parquet input larger than this is read "
                                  "in pieces of about this size by several workers (compressed files and text are read whole)")
    reject_files: int = Field(8, gt=0, description="rejects are written to up to this many JSONL files, by a stable hash of source and id")
    min_chars: int = Field(1, ge=0, description="reject texts shorter than this after cleaning (too_short)")
    max_control_ratio: float = Field(0.001, ge=0.0, le=1.0, description="reject texts with a larger share of control characters (binary)")
    unicode_normalization: Literal["NFC", "NFKC", "none"] = Field("NFC", description="Unicode normalisation form applied to the text")
    strip_gutenberg: bool = Field(True, description="strip Project Gutenberg licence header and footer when present")
    encode_piece_chars: int = Field(32_768, gt=0, description="long texts are encoded in pieces of about this many characters (cut at spaces; for SentencePiece BPE, the distinct words of a text joined into pieces of this size)")

    @model_validator(mode="before")
    @classmethod
    def _refuse_trainer_keys(cls, data: Any) -> Any:
        refuse_trainer_keys(data)
        return data

    def resolved_stages(self) -> list[Stage]:
        catalog = {name: (s.length, s.min_tokens, s.max_tokens) for name, s in self.stage_catalog.items()}
        return parse_stage_list(self.stages, {**KNOWN_STAGES, **catalog_stages(catalog)})

    def data_config(self) -> dict[str, Any]:
        """What determines the data (hashed into every shard): all but where it is written.

        reject_files is hashed too, though it does not change a shard's rows: it decides how the
        output's rejects/ is laid out, and a rerun with another count on a finished output would
        otherwise pass for that output ("already complete", while rejects/ still holds the old
        count of files). In the hash, it meets the "finished job made with a different config"
        refusal (and --overwrite) like any other key. Only a count other than the default is
        hashed, so that every output made before the key was hashed keeps its hash (as max_chunks)."""
        data = self.model_dump(mode="json", exclude={"output", "overwrite", "stage_catalog"})
        if data.get("reject_files") == type(self).model_fields["reject_files"].default:
            data.pop("reject_files")
        data["stages"] = [vars(s) for s in self.resolved_stages()]
        return data

    def hash(self) -> str:
        return config_hash(self.data_config())


class TextFrontConfig(JobConfig):
    """Curation fields of the text front that books and QA share (pipelines/books.py PrepareDocuments).
    The near-duplicate defaults equal curation.near_duplicates.MinHashConfig's (a test checks)."""

    near_duplicates: bool = Field(True, description="reject near-duplicate documents (MinHash LSH over word n-grams): one kept per cluster, the longest")
    near_dup_threshold: float = Field(0.5, gt=0.0, le=1.0, description="estimated Jaccard similarity of word n-gram sets at or above which two documents are near-duplicates")
    near_dup_ngram: int = Field(5, ge=1, description="words per shingle (n-gram) for near-duplicate detection")
    near_dup_bands: int = Field(40, ge=1, description="LSH bands: documents sharing one band's values are compared (bands x rows MinHash permutations)")
    near_dup_rows: int = Field(3, ge=1, description="MinHash values per LSH band")
    decontaminate: list[str] = Field(default_factory=list, description="evaluation documents (text, JSONL or Parquet files, folders or globs; local or fsspec URL): a document holding at least decontaminate_threshold of one's word n-grams is rejected (contaminated); repeatable", json_schema_extra={"flag": "--decontaminate"})
    decontaminate_ngram: int = Field(13, ge=1, description="words per n-gram compared with the evaluation documents (13, as GPT-3)")
    decontaminate_threshold: float = Field(0.5, gt=0.0, le=1.0, description="share of an evaluation document's n-grams a document must hold to be rejected as contaminated")
    decontaminate_text_field: str = Field("text", description="JSONL field / Parquet column holding the text of the evaluation documents")
    quality_filter: bool = Field(True, description="reject documents failing a Gopher-style quality rule (low_quality:RULE; thresholds in quality)")
    quality: QualityRules = Field(default_factory=QualityRules, description="thresholds of the quality rules, a YAML mapping (curation/quality.py QualityRules; null switches a bound off); as a flag an inline YAML mapping such as '{min_words: 50}', which replaces the file's quality section")
    languages: Languages = Field(default_factory=lambda: ["en"], description="keep documents in these languages (ISO 639-1 codes, identified by lingua on three evenly spaced 1,000-character windows); others are rejected (language); empty (--languages '') = off; repeatable or comma-separated")
    min_language_confidence: float = Field(0.5, ge=0.0, le=1.0, description="a document's summed confidence for the allowed languages must reach this (language)")

    @staticmethod
    def check_given(given: dict[str, Any], where: Callable[[str], str]) -> None:
        """Settings the user gave (flags and --config keys; see VideoConfig.check_given) that the
        job would ignore without a word: a filter's settings with the filter off, decontamination
        settings without evaluation documents; and a near-duplicate banding that cannot find the
        pairs at its own threshold. A default is never given, so it never triggers any of these."""
        refuse_ignored(given, where, ("quality",), "quality_filter",
                       given.get("quality_filter") is False, "which turns the quality rules off", "--quality-filter")
        refuse_ignored(given, where, ("min_language_confidence",), "languages",
                       given.get("languages") == [], "which turns language identification off", "languages to keep (--languages en)")
        refuse_ignored(given, where, NEAR_DUP_KEYS, "near_duplicates",
                       given.get("near_duplicates") is False, "which turns near-duplicate detection off", "--near-duplicates")
        if not given.get("decontaminate"):
            found = [key for key in DECONTAMINATE_KEYS if given.get(key) is not None]
            if found:
                raise ValueError(f"{_and(where(k) for k in found)} {_is(found)} given without --decontaminate (no evaluation "
                                 f"documents), so {_it(found)} would be ignored: drop {_it(found, 'them')} or give the evaluation "
                                 "documents with --decontaminate FILE")
        banding = ("near_dup_threshold", "near_dup_bands", "near_dup_rows")
        found = [key for key in banding if given.get(key) is not None]
        if found and given.get("near_duplicates") is not False:
            fields = TextFrontConfig.model_fields
            threshold, bands, rows = (given[k] if given.get(k) is not None else fields[k].default for k in banding)
            problem = banding_problem(threshold, bands, rows)
            if problem:
                b, r = suggested_banding(threshold, bands * rows)
                raise ValueError(f"{_and(where(k) for k in found)}: {problem} (--near-dup-bands {b} --near-dup-rows {r})")


# The near-duplicate and decontamination settings, which only a job doing that reads.
NEAR_DUP_KEYS = ("near_dup_threshold", "near_dup_ngram", "near_dup_bands", "near_dup_rows")
DECONTAMINATE_KEYS = ("decontaminate_ngram", "decontaminate_threshold", "decontaminate_text_field")


def _and(items) -> str:
    return " and ".join(items)


def _is(found: list) -> str:
    return "is" if len(found) == 1 else "are"


def _it(found: list, plural: str = "they") -> str:
    return "it" if len(found) == 1 else plural


def _overrides_the_file(where: Callable[[str], str], switch: str, settings: list[str]) -> bool:
    """Whether a flag (`switch`) turns off, for this run, what the --config file's `settings`
    configure (`--no-quality-filter` with a file's `quality:`): the flag is then doing its job, and
    the file stays usable for the runs that keep the step. `where` names a flag as `--...`."""
    return where(switch).startswith("--") and not any(where(key).startswith("--") for key in settings)


def refuse_ignored(given: dict[str, Any], where: Callable[[str], str], keys: tuple[str, ...], switch: str, off: bool,
                   effect: str, remedy: str) -> None:
    """One line when a setting among `keys` is given while `switch` (given, so `off` is what the
    user asked for) turns off what reads it."""
    found = [key for key in keys if given.get(key) is not None]
    if off and found and not _overrides_the_file(where, switch, found):
        raise ValueError(f"{_and(where(k) for k in found)} {_is(found)} given with {where(switch)}, {effect}, so "
                         f"{_it(found)} would be ignored: drop {_it(found, 'them')} or give {remedy}")


class BooksConfig(TextFrontConfig):
    """`longctx books`: clean, tokenize, length-filter and pack books into stage shards."""


class QAConfig(TextFrontConfig):
    """`longctx qa`: a short-context model writes a QA pair per chunk; long chat examples per stage."""

    backend: Literal["extractive", "transformers", "vllm"] = Field("extractive", description="generator: extractive (no model), transformers (local model) or vllm (GPU workers)")
    model: str | None = Field(None, description="generator model: local folder or hub id (transformers, vllm)")
    gguf_file: str | None = Field(None, description="a GGUF file inside --model to load (transformers; dequantised)")
    device: str = Field("cpu", description="transformers device: cpu, cuda, ...")
    trust_remote_code: bool = Field(False, description="let transformers run code shipped with the model")
    batch_size: int = Field(4, ge=1, description="prompts per generation batch")
    max_new_tokens: int = Field(96, ge=1, description="generation budget per QA pair")
    temperature: float = Field(0.0, ge=0.0, description="sampling temperature (0 = greedy)")
    vllm_server_kwargs: dict[str, str] = Field(default_factory=dict, description="extra vLLM server flags (YAML only)")
    vllm_chat_template: str | None = Field(None, description="vllm: a Jinja chat template file (readable from every worker, e.g. gs://...) for a generator whose tokenizer has none; prompts always go through a chat template")
    prompt_template: str | None = Field(None, description="Python format string with {passage}; default asks for JSON {question, answer}")
    chunk_tokens: int = Field(1000, gt=0, description="target chunk size in training-tokenizer tokens")
    chunk_min_tokens: int = Field(500, gt=0, description="smallest chunk (except a book's last)")
    chunk_max_tokens: int = Field(1500, gt=0, description="largest chunk")
    max_answer_words: int = Field(40, ge=1, description="reject longer answers (answer_too_long)")
    min_grounding: float = Field(0.5, ge=0.0, le=1.0, description="share of the answer's content words that must occur in the chunk (answer_not_grounded)")
    chat_format: Literal["lwm", "tokenizer"] = Field("lwm", description="lwm: the release's 'You are a helpful assistant. USER: .. ASSISTANT: ..'; tokenizer: the training tokenizer's own chat template (a tokenizer folder or hub id that has one)")
    qa_order: Literal["in_order", "shuffled"] = Field("in_order", description="order of the QA turns after the context")
    keep_raw_output: bool = Field(False, description="keep the model's raw output in rejects (debugging)")
    max_chunks: int | None = Field(None, ge=1, description="try the generator on the first N chunks of each book only; the rest are rejected as not_generated (one reject per book); default: all chunks")

    @staticmethod
    def check_given(given: dict[str, Any], where: Callable[[str], str]) -> None:
        """TextFrontConfig's checks, and a generator setting given for a backend that does not
        read it (GENERATOR_KEYS): `--model` with the extractive backend would run no model."""
        TextFrontConfig.check_given(given, where)
        backend = given.get("backend") or "extractive"
        unread = [key for key in GENERATOR_KEYS["all"] if given.get(key) is not None and key not in GENERATOR_KEYS[backend]]
        if not unread or (given.get("backend") and _overrides_the_file(where, "backend", unread)):
            return
        named = where("backend") if given.get("backend") else "--backend extractive (the default)"
        readers = [b for b in BACKENDS if all(key in GENERATOR_KEYS[b] for key in unread)]
        read_by = (f"read only by {' and '.join(f'--backend {b}' for b in readers)}" if readers
                   else "no one backend reads them all")
        raise ValueError(f"{_and(where(k) for k in unread)} {_is(unread)} given, but {named} does not read "
                         f"{_it(unread, 'them')} ({read_by}), so {_it(unread)} would be ignored: drop {_it(unread, 'them')}"
                         + ((" or choose that backend" if len(readers) == 1 else " or choose one of those") if readers else ""))

    @model_validator(mode="after")
    def _chunk_sizes_in_order(self) -> QAConfig:
        if not self.chunk_min_tokens <= self.chunk_tokens <= self.chunk_max_tokens:
            raise ValueError(f"chunk sizes must be chunk_min_tokens <= chunk_tokens <= chunk_max_tokens, got "
                             f"{self.chunk_min_tokens} <= {self.chunk_tokens} <= {self.chunk_max_tokens}")
        return self

    def data_config(self) -> dict[str, Any]:
        data = super().data_config()
        data.pop("device", None)
        if data.get("max_chunks") is None:  # unset: the hash of a full run stays what it was before the key existed
            data.pop("max_chunks", None)
        return data


BACKENDS = ("extractive", "transformers", "vllm")
# The generator settings each QA backend reads (pipelines/qa.py: BuildQAShards._handler_kwargs and
# _inference_args, ToExample's prompt; pipelines/qa_backends.py make_handler): extractive runs no
# model and sends the bare chunk; vllm's server takes no device, batch size or remote-code switch
# (those go in vllm_server_kwargs). keep_raw_output is read by every backend.
GENERATOR_KEYS: dict[str, tuple[str, ...]] = {
    "extractive": (),
    "transformers": ("model", "gguf_file", "device", "trust_remote_code", "batch_size", "max_new_tokens", "temperature",
                     "prompt_template"),
    "vllm": ("model", "vllm_server_kwargs", "vllm_chat_template", "max_new_tokens", "temperature", "prompt_template"),
}
GENERATOR_KEYS["all"] = tuple(dict.fromkeys(key for backend in BACKENDS for key in GENERATOR_KEYS[backend]))


VisionLayout = Literal["separate", "unified"]


def vision_layout_field():
    """The one `vision_layout` setting of the video and image jobs (the same flag and help for both)."""
    return Field("separate", description="separate: vision codes in their own id space + vision_mask (the LWM release); unified: vision ids after the text vocabulary, <vision>/</vision> as single ids")


class VideoConfig(JobConfig):
    """`longctx video`: video + text manifests -> VQGAN codes laid out with their text, packed per stage."""

    vqgan: str = Field("", description="VQGAN: a diffusers VQModel folder (config.json + safetensors), our saved params, or a hub id")
    video_field: str = Field("video", description="manifest field with the video's path or URL (relative paths are relative to the manifest)")
    fps: float | None = Field(1.0, gt=0.0, allow_inf_nan=False, description="sample frames at this rate (uniform); None with frame_count for a fixed count")
    frame_count: int | None = Field(None, ge=1, description="sample exactly this many frames per video, uniformly (instead of fps: giving both is refused)")
    max_frames: int = Field(512, ge=1, description="at most this many frames per video (still spanning the whole video)")
    frame_size: int = Field(256, ge=1, description="frames are resized (short side) and center-cropped to this size")
    encode_batch: int = Field(8, ge=1, description="frames decoded and encoded per batch (fixed jitted shape)")
    vision_layout: VisionLayout = vision_layout_field()
    text_position: Literal["auto", "before", "after"] = Field("auto", description="text before or after the vision block; auto picks per example, deterministically")
    allow_empty_text: bool = Field(False, description="keep a video whose text is empty or blank as a video-only example; by default it is rejected as empty (a video-text pair needs its text), before its frames are decoded")

    @staticmethod
    def check_given(given: dict[str, Any], where: Callable[[str], str]) -> None:
        """What the user gave (the --config file's keys and the flags, before the defaults are
        filled in; `where(key)` names a key as it was given, for the message): frames are sampled by frame_count or by fps, and frame_count wins, so an fps
        given with it would be ignored without a word. Checked here rather than on the model:
        a manifest's config is validated again with every field set (fps's default included)."""
        if given.get("fps") is None or given.get("frame_count") is None:
            return
        raise ValueError(f"{where('fps')} and {where('frame_count')} are both given, but frames are sampled by one of them "
                         "(frame_count: exactly that many; fps: at that rate): give only one (fps: null in a config file)")


class ImagesConfig(JobConfig):
    """`longctx images`: image-text pairs -> one VQGAN frame each, laid out with its caption, packed per stage."""

    vqgan: str = Field("", description="VQGAN: a diffusers VQModel folder (config.json + safetensors), our saved params, or a hub id")
    image_field: str = Field("image", description="field/column with the image: bytes, or a path/URL (relative to the input file)")
    frame_size: int = Field(256, ge=1, description="images are resized (short side) and center-cropped to this size")
    encode_batch: int = Field(8, ge=1, description="images encoded per VQGAN batch (fixed jitted shape)")
    vision_layout: VisionLayout = vision_layout_field()
    caption_position: Literal["auto", "before", "after"] = Field("auto", description="caption before the image (generation, loss on the image) or after it (captioning, loss on the caption); auto picks per pair")
    allow_empty_text: bool = Field(False, description="keep a pair whose caption is empty or blank as an image-only example; by default it is rejected as empty (captioning it would teach the model to end right after an image), before the image is decoded")


def load_yaml(path: str | Path) -> dict[str, Any]:
    data = read_config_yaml(path) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must be a YAML mapping, got {type(data).__name__}")
    return data


def _flag(name: str, field) -> str:
    extra = field.json_schema_extra or {}
    return extra.get("flag", "--" + name.replace("_", "-"))


def _default_text(field) -> str:
    """The field's default as --help shows it, or "" where there is nothing short to show (no
    default, an empty value, a nested mapping). The flags themselves default to None so that a
    --config file's value is not overridden by a default nobody typed."""
    import enum

    if field.is_required():
        return ""
    value = field.get_default(call_default_factory=True)
    if isinstance(value, bool):
        value = "on" if value else "off"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in value):
        value = ",".join(map(str, value))
    if value is None or value == "" or not isinstance(value, (str, int, float)):
        return ""
    if isinstance(value, int) and value >= 10_000:
        value = f"{value:,}"
    return f" (default: {value})".replace("%", "%%")  # argparse formats help strings with %


def add_config_flags(parser: argparse.ArgumentParser, *models: type[BaseModel]) -> None:
    """One flag per config field of the given models (a field they share is added once;
    YAML-only fields, dicts, are skipped)."""
    parser.add_argument("--config", help="YAML file with any of the keys below; flags override it")
    fields = {}
    for model in models:
        for name, field in model.model_fields.items():
            fields.setdefault(name, field)
    for name, field in fields.items():
        annotation = field.annotation
        origin = typing.get_origin(annotation)
        help_text = f"{field.description} [config key: {name}]{_default_text(field)}"
        if origin is dict:
            continue
        if annotation is bool:
            parser.add_argument(_flag(name, field), dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif origin is list:
            parser.add_argument(_flag(name, field), dest=name, action="append", default=None, help=help_text)
        else:
            choices = None
            if origin is Literal:
                choices = list(typing.get_args(annotation))
            elif isinstance(annotation, type) and issubclass(annotation, __import__("enum").Enum):
                choices = [m.value for m in annotation]
            kind = annotation if annotation in (int, float) else str
            parser.add_argument(_flag(name, field), dest=name, type=kind, choices=choices, default=None, help=help_text)


def config_from_args(model: type[BaseModel], args: argparse.Namespace) -> BaseModel:
    data = load_yaml(args.config) if getattr(args, "config", None) else {}
    if issubclass(model, JobConfig):
        refuse_trainer_keys(data, str(args.config))
    flagged = set()
    for name in model.model_fields:
        value = getattr(args, name, None)
        if value is None:
            continue
        if name == "stages":  # --stages 32k,128k or repeated --stages
            value = [s for part in value for s in part.split(",") if s]
        data[name] = value
        flagged.add(name)
    def where(name: str) -> str:
        """Where the user gave `name`: the flag as it was typed, else the config file's key."""
        value = data[name]
        if name in flagged:  # as it was typed: --no-near-duplicates, --languages '', --decontaminate a --decontaminate b
            flag = _flag(name, model.model_fields[name])
            if isinstance(value, bool):
                return flag if value else "--no-" + flag.removeprefix("--")
            values = value if isinstance(value, list) else [value]
            return " ".join(f"{flag} {shlex.quote(str(v)) if isinstance(v, str) else v}" for v in values)
        if isinstance(value, bool) or value is None:
            value = {True: "true", False: "false", None: "null"}[value]
        return f"{name}: {value} in {args.config}"

    try:
        config = model.model_validate(data)
    except ValidationError as err:  # a mistyped key or a wrong value: one line, naming where
        # The value of a flag is the flag's mistake (`--model tooy: model: unknown preset`), not the
        # --config file's, which may not even hold the key.
        line = validation_line(err, known_keys=top_level_keys(model))
        first = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]["loc"]
        # A check across keys (no location) names its key first: "model: unknown preset ...". A key
        # a flag gave is not the --config file's mistake (the file may not even hold it): the line,
        # which names the key and the value, is said without the file.
        key = first[0] if first else line.split(":", 1)[0]
        source = f"{args.config}: " if getattr(args, "config", None) and key not in flagged else ""
        raise ValueError(f"{source}{line}") from None
    check_given = getattr(model, "check_given", None)
    if check_given is not None:  # settings that exclude each other, judged on what the user gave
        # The given keys' values as the model read them (`--languages ''` is [], a --quality
        # string a mapping), named by `where` as the user gave them.
        check_given({name: getattr(config, name) for name in data}, where)
    return config
