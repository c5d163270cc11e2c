"""Reading book records from files (JSONL, Parquet, plain text; compressed or not) via fsspec.

Each file yields `Document`s and `Reject`s, never an exception: a record that cannot be read is
a reject with its reason, and a file that breaks part-way (a truncated archive) yields the
records before the break and one `corrupt_file` reject for the rest. A Parquet file is read row
group by row group: a corrupt row group is one `corrupt_file` reject standing for its rows (the
footer knows how many), and the row groups after it are still read.

Large inputs are read in parallel pieces (`plan_reads` -> `FileRange`s, `iter_range_records`): an
uncompressed JSONL file over `split_bytes` by byte ranges (a range owns the lines that start in
it), a Parquet file by runs of row groups (from its footer). Compressed files and plain text stay
whole: a compressed stream cannot be entered in the middle. Each record is read by exactly one
range. A record of a split JSONL file is numbered by the byte offset of its line (its place in the
file whatever the ranges), a Parquet row by its row number from the footer, as when read whole.

A record's id is the one in its `id_field`, or else where it is in its file, by the file's name
(`books.jsonl:12`, `part-0.parquet:7`, a plain-text book's file name); an unreadable stretch's id
is the file name and where the stretch starts. Ids never hold the folder (`source` does), so the
shards' `doc_ids` do not change when a corpus moves.

A network failure (connection reset, timeout, HTTP 429/5xx) is raised, so the runner retries the
work item; only bytes that really cannot be read as the format are a `corrupt_file` reject.

A local file whose name is not valid UTF-8 travels as bytes (`os.fsencode`), since Beam's coders
only carry valid UTF-8 strings; its records name it with the bad bytes escaped (`bad\\xff.jsonl`).
"""

from __future__ import annotations

import errno
import io
import json
import os
import posixpath
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import fsspec

from curation.accounting import LONE_SURROGATE, Reason, Reject, printable
from curation.documents import Document
from curation.text import Rejected, decode_utf8

COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".xz": "xz"}
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".txt": "text"}
# The extensions above, as help texts and messages name them.
BOOK_FILES = f"{', '.join(FORMATS)} (optionally {', '.join(COMPRESSIONS)})"


@dataclass(frozen=True)
class SourceConfig:
    text_field: str = "text"
    id_field: str = "id"
    format: str = "auto"  # auto | jsonl | parquet | text
    parquet_batch_rows: int = 64
    # Fields a record must carry along besides its text: media references (a video's or image's
    # path or URL, or its bytes), each checked by `media_reference`.
    meta_fields: tuple[str, ...] = ()
    split_bytes: int = 64 << 20  # uncompressed JSONL / Parquet files larger than this are read in pieces


class FileRange(NamedTuple):
    """One work item of reading: a whole file (`kind="file"`), the JSONL lines starting in bytes
    [start, stop), or the Parquet row groups [start, stop) whose first row is row `first_row`."""

    url: str | bytes
    kind: str = "file"  # file | jsonl_bytes | parquet_groups
    start: int = 0
    stop: int = 0
    first_row: int = 0


def split_extension(url: str) -> tuple[str, str | None]:
    """(format, compression) from a file name such as `books.jsonl.zst`."""
    name = posixpath.basename(url).lower()
    stem, dot, ext = name.rpartition(".")
    compression = COMPRESSIONS.get(f".{ext}") if dot else None
    if compression:
        stem, dot, ext = stem.rpartition(".")
    return FORMATS.get(f".{ext}", "unknown") if dot else "unknown", compression


# A job's output folder (`curation.shards`, `pipelines.accounting`): its manifest and its rejects
# are JSONL-like files that a folder input must not read back as books.
MANIFEST_FILE = "manifest.json"
_REJECTS_FILE = re.compile(r"rejects-\d{5,}-of-\d{5,}\.jsonl")


class SkippedOutput(NamedTuple):
    """A folder under a folder input that was not read: a longctx job's output."""

    url: str
    why: str


def is_job_manifest(data: bytes) -> bool:
    """Whether `data` is a longctx job's manifest.json: a JSON object with a "kind" string, a
    "stages" object and a "config_hash" (what `curation.manifest.build_manifest` writes)."""
    try:
        manifest = json.loads(data)
    except ValueError:  # not JSON, not UTF-8
        return False
    return (isinstance(manifest, dict) and isinstance(manifest.get("kind"), str)
            and isinstance(manifest.get("stages"), dict) and "config_hash" in manifest)


def _same_fs(fs, other) -> bool:
    mine = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    theirs = {other.protocol} if isinstance(other.protocol, str) else set(other.protocol)
    return bool(mine & theirs)


def _job_outputs(fs, root: str, paths: list[str], exclude: Iterable[str]) -> list[tuple[str, str]]:
    """(folder, why) of every job output strictly under `root` among the listed `paths`: a folder
    named in `exclude` (the running job's own output), one holding a job manifest (a finished
    job), or one whose rejects/ holds our `rejects-NNNNN-of-NNNNN.jsonl` (a finished or killed
    one). Only the listing and the manifests found in it are read."""
    root = root.rstrip("/")
    found: dict[str, str] = {}
    for url in exclude:
        other, folder = fsspec.core.url_to_fs(url)
        folder = folder.rstrip("/")
        if _same_fs(fs, other) and folder.startswith(root + "/"):
            found[folder] = "this job's output"
    for path in paths:
        folder, name = posixpath.split(path)
        if not folder.startswith(root + "/") or folder in found:
            continue
        if name == MANIFEST_FILE:
            try:
                with fs.open(path, "rb") as fh:
                    if is_job_manifest(fh.read()):
                        found[folder] = f"a longctx job's output ({MANIFEST_FILE})"
            except Exception as err:  # an unreadable manifest.json is read (and reported) as an input
                if is_transient_io_error(err):
                    raise
        elif _REJECTS_FILE.fullmatch(name) and posixpath.basename(folder) == "rejects":
            parent = posixpath.dirname(folder)
            if parent.startswith(root + "/"):
                found.setdefault(parent, "a longctx job's output (rejects/)")
    outermost = []
    for folder in sorted(found):  # a job output inside another is skipped with it
        if not any(folder.startswith(f + "/") for f, _ in outermost):
            outermost.append((folder, found[folder]))
    return outermost


def expand_inputs(pattern: str, exclude: Iterable[str] = ()) -> tuple[list[str], list[SkippedOutput]]:
    """Files matching a local path, folder or glob, or any fsspec URL/glob, as full URLs, sorted;
    and the folders that a folder input skipped. A path that exists is taken literally, even if it
    holds glob characters (`book[1].jsonl`).
    A folder is searched whole except for the longctx job outputs below it (`_job_outputs`: a
    folder in `exclude`, one with a job manifest, one with our rejects/), so that a job whose
    output lies inside its input folder does not read an earlier run's manifest and rejects as
    books. A file or glob the user names is read as given."""
    fs, path = fsspec.core.url_to_fs(pattern)
    skipped: list[SkippedOutput] = []
    if fs.isdir(path):
        paths = fs.find(path)
        outputs = _job_outputs(fs, path, paths, exclude)
        if outputs:
            cut = tuple(f"{folder}/" for folder, _ in outputs)
            paths = [p for p in paths if not p.startswith(cut)]
            skipped = [SkippedOutput(fs.unstrip_protocol(f) if "://" in pattern else f, why) for f, why in outputs]
        paths = [p for p in paths if split_extension(p)[0] != "unknown"]
    elif fs.exists(path):
        paths = [path]
    elif any(ch in path for ch in "*?["):
        paths = fs.glob(path)
    else:
        paths = []
    files = sorted(p for p in paths if not fs.isdir(p))
    return [fs.unstrip_protocol(p) if "://" in pattern else p for p in files], skipped


def expand_pattern(pattern: str, exclude: Iterable[str] = ()) -> list[str]:
    """The files of `expand_inputs`, the job outputs below a folder left out (quietly)."""
    return expand_inputs(pattern, exclude)[0]


def portable_url(url: str) -> str | bytes:
    """The URL itself, or its bytes when it is not valid UTF-8 (a local file name in another
    encoding, decoded by Python with surrogate escapes): Beam's string coder cannot carry it."""
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(url)
    return url


def file_url(url: str | bytes) -> tuple[str, str]:
    """(path to open, name to record) of a URL from `portable_url`."""
    if isinstance(url, bytes):
        return os.fsdecode(url), url.decode("utf-8", "backslashreplace")
    return url, printable(url)


def _record_id(value: object, fallback: str) -> str:
    # Ids are written to shards, rejects and logs: escape a lone surrogate once, here.
    return fallback if value is None or value == "" else printable(str(value))


def _encodes(text: str) -> bool:
    """Whether `text` is valid as UTF-8: a Python str fails only on a surrogate code point."""
    if text.isascii():  # a flag of the string: no scan
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unencodable(text: str, meta: dict) -> str | None:
    """Where a record holds text that cannot be encoded as UTF-8, or None."""
    if not _encodes(text):  # the regex only runs to say where: scanning a novel costs 6x the encode
        match = LONE_SURROGATE.search(text)
        return f"lone surrogate U+{ord(match.group()):04X} at char {match.start()} of the text"
    for name, value in meta.items():
        if isinstance(value, str) and not _encodes(value):
            return f"lone surrogate in field {name!r}"
    return None


def media_reference(field: str, value: object) -> str | bytes:
    """A media field's value: a path or URL (str), or the media's bytes. A Hugging Face `datasets`
    Image cell (`{"bytes": ..., "path": ...}`, a struct in Parquet) gives its bytes, or its path
    when it holds no bytes. Null or empty is `Rejected(MISSING_FIELD)`, any other value
    `Rejected(WRONG_TYPE)`: a list or a number is never turned into a file name."""
    if isinstance(value, dict) and value and set(value) <= {"bytes", "path"}:
        data = value.get("bytes")
        if data is not None and not isinstance(data, bytes):
            raise Rejected(Reason.WRONG_TYPE, f"{field!r} bytes are {type(data).__name__}, not bytes")
        value = data if data is not None else value.get("path")
    if value is None or value == "" or value == b"":
        raise Rejected(Reason.MISSING_FIELD, f"{field!r} is {'null' if value is None else 'empty'}")
    if not isinstance(value, (str, bytes)):
        raise Rejected(Reason.WRONG_TYPE, f"{field!r} is {type(value).__name__}, not a path, URL or bytes")
    return value


def _fields(text: object, values: dict, config: SourceConfig) -> dict:
    """The record's media fields, checked (`media_reference`); a null text is a missing field,
    as in Parquet, where a column cannot be absent from one row only."""
    if text is None:
        raise Rejected(Reason.MISSING_FIELD, f"{config.text_field!r} is null")
    return {f: media_reference(f, values[f]) for f in config.meta_fields}


def _document(url: str, index: int, record_id: str, text: object, meta: dict | None = None) -> Document | Reject:
    meta = meta or {}
    if isinstance(text, bytes):
        try:
            text = decode_utf8(text)
        except Rejected as err:
            return Reject(url, record_id, err.reason, err.detail)
    if not isinstance(text, str):
        return Reject(url, record_id, Reason.WRONG_TYPE, f"text is {type(text).__name__}, not a string")
    problem = _unencodable(text, meta)
    if problem:
        return Reject(url, record_id, Reason.INVALID_UNICODE, problem)
    doc = Document(source=url, id=record_id, uid=f"{url}#{index}", index=index, text=text)
    return doc.with_(meta=meta) if meta else doc


def iter_lines(fh, block: int = 1 << 20) -> Iterator[bytes]:
    """Lines of a binary stream, read in blocks (works for decompressors that lack readline).
    `read1` where there is one: it returns what one underlying read decoded, so the lines before
    a truncated archive's end are yielded before its EOFError (`read` would drop the block)."""
    read = getattr(fh, "read1", fh.read)
    pending: list[bytes] = []  # pieces of a line longer than one block, joined once complete
    while True:
        chunk = read(block)
        if not chunk:
            break
        if b"\n" not in chunk:
            pending.append(chunk)
            continue
        lines = chunk.split(b"\n")
        lines[0] = b"".join(pending + [lines[0]])
        pending = [lines.pop()]
        yield from lines
    if any(pending):
        yield b"".join(pending)


def _parse_json(line: str, where: str) -> object:
    """One JSONL line, or `Rejected(MALFORMED_JSON)`. Valid JSON can still be unreadable here:
    nesting deeper than Python's recursion limit, or an integer past `int`'s digit limit."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise Rejected(Reason.MALFORMED_JSON, f"{where}: {err.msg} at col {err.colno}") from None
    except RecursionError:
        raise Rejected(Reason.MALFORMED_JSON, f"{where}: nested too deeply to parse") from None
    except ValueError as err:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise Rejected(Reason.MALFORMED_JSON, f"{where}: {_one_line(err)}") from None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _iter_jsonl(fh, url: str, config: SourceConfig) -> Iterator[Document | Reject]:
    """Every line of a whole JSONL stream; a record is numbered by its line."""
    base = posixpath.basename(url)
    lines = ((index, f"line {index + 1}", f"{base}:{index + 1}", raw) for index, raw in enumerate(iter_lines(fh)))
    yield from _jsonl_records(lines, url, config)


def _jsonl_records(lines: Iterable[tuple[int, str, str, bytes]], url: str,
                   config: SourceConfig) -> Iterator[Document | Reject]:
    """(index, where, fallback id, raw line) -> Documents and Rejects."""
    for index, where, fallback, raw in lines:
        if index == 0:
            raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark starts the file, not the record
        if not raw.strip():
            yield Reject(url, fallback, Reason.EMPTY, f"blank {where}")
            continue
        try:
            line = decode_utf8(raw)
        except Rejected as err:
            yield Reject(url, fallback, err.reason, f"{where}: {err.detail}")
            continue
        try:
            record = _parse_json(line, where)
        except Rejected as err:
            yield Reject(url, fallback, err.reason, err.detail)
            continue
        if not isinstance(record, dict):
            yield Reject(url, fallback, Reason.MALFORMED_JSON, f"{where}: not a JSON object")
            continue
        record_id = _record_id(record.get(config.id_field), fallback)
        missing = [f for f in (config.text_field, *config.meta_fields) if f not in record]
        if missing:
            yield Reject(url, record_id, Reason.MISSING_FIELD, f"no {missing[0]!r} field")
            continue
        try:
            meta = _fields(record[config.text_field], record, config)
        except Rejected as err:
            yield Reject(url, record_id, err.reason, err.detail)
            continue
        yield _document(url, index, record_id, record[config.text_field], meta)


def _range_lines(fh, base: str, start: int, stop: int, block: int = 1 << 20) -> Iterator[tuple[int, str, str, bytes]]:
    """The lines of an uncompressed stream that start in bytes [start, stop), with their offsets.
    A line that starts before `start` belongs to the range before (it is skipped here); the last
    line may run past `stop` and is read whole."""
    offset = 0
    if start > 0:
        fh.seek(start - 1)
        offset = start - 1
        while True:  # skip to just after the first newline at or after start - 1
            chunk = fh.read(block)
            if not chunk:
                return
            cut = chunk.find(b"\n")
            if cut >= 0:
                offset += cut + 1
                fh.seek(offset)
                break
            offset += len(chunk)
    for raw in iter_lines(fh, block):
        if offset >= stop:
            return
        yield offset, f"line at byte {offset}", f"{base}@{offset}", raw
        offset += len(raw) + 1


def _column_values(column) -> list:
    """A Parquet column as Python values. A string column holding bytes that are not UTF-8 cannot
    be decoded as a whole: it is then read as bytes, so only the rows that hold them are rejected
    (as `invalid_utf8`, by `_document` and `_string_fields`)."""
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        import pyarrow as pa

        return column.cast(pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary()).to_pylist()


def _string_fields(values: dict) -> dict:
    """Media fields read as bytes from a string column (`_column_values`) back to str, or
    `Rejected(INVALID_UTF8)`; bytes from a binary column are the media itself and stay bytes."""
    out = {}
    for field, (value, string) in values.items():
        if isinstance(value, bytes) and string:
            try:
                value = decode_utf8(value)
            except Rejected as err:
                raise Rejected(err.reason, f"field {field!r}: {err.detail}") from None
        out[field] = value
    return out


def _parquet_rows(batch, url: str, base: str, first: int, config: SourceConfig, has_id: bool) -> Iterator[Document | Reject]:
    import pyarrow as pa

    texts = _column_values(batch.column(config.text_field))
    ids = _column_values(batch.column(config.id_field)) if has_id else [None] * len(texts)
    metas = [(f, _column_values(batch.column(f)), pa.types.is_string(batch.column(f).type)
              or pa.types.is_large_string(batch.column(f).type)) for f in config.meta_fields]
    for row, (text, raw_id) in enumerate(zip(texts, ids)):
        index = first + row
        if isinstance(raw_id, bytes):  # an id column with bytes that are not UTF-8: name the row anyway
            raw_id = raw_id.decode("utf-8", "backslashreplace")
        record_id = _record_id(raw_id, f"{base}:{index + 1}")
        try:
            values = _string_fields({f: (values[row], string) for f, values, string in metas})
            meta = _fields(text, values, config)
        except Rejected as err:
            yield Reject(url, record_id, err.reason, err.detail)
            continue
        yield _document(url, index, record_id, text, meta)


def _iter_parquet(fh, url: str, config: SourceConfig, groups_range: tuple[int, int] | None = None,
                  first_row: int = 0) -> Iterator[Document | Reject]:
    """Row groups (all, or [start, stop) whose first row is `first_row`) batch by batch."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(fh)
    names = parquet.schema_arrow.names
    missing = [f for f in (config.text_field, *config.meta_fields) if f not in names]
    if missing:  # every row of the file (or of this work item's row groups) is unreadable: count them all
        first, stop = groups_range or (0, parquet.metadata.num_row_groups)
        rows = sum(parquet.metadata.row_group(g).num_rows for g in range(first, stop))
        yield Reject(url, posixpath.basename(url) if groups_range is None else f"{posixpath.basename(url)}@{first_row}",
                     Reason.MISSING_FIELD, f"no {missing[0]!r} column (has {names}; {rows} rows unread)",
                     records=max(rows, 1))
        return
    has_id = config.id_field in names
    columns = [config.text_field, *config.meta_fields] + ([config.id_field] if has_id else [])
    base = posixpath.basename(url)
    groups = parquet.metadata.num_row_groups
    index = first_row  # a record's position in the file, from the footer's row counts: stable past a bad group
    for group in range(*(groups_range or (0, groups))):
        group_rows = parquet.metadata.row_group(group).num_rows
        done = 0
        try:
            for batch in parquet.iter_batches(batch_size=config.parquet_batch_rows, columns=columns, row_groups=[group]):
                rows = list(_parquet_rows(batch, url, base, index + done, config, has_id))
                done += batch.num_rows
                yield from rows
        except Exception as err:  # a corrupt page: this group's unread rows are one reject, then go on
            if is_transient_io_error(err):
                raise
            unread = group_rows - done
            yield Reject(
                url,
                f"{base}@{index + done}",
                Reason.CORRUPT_FILE,
                f"row group {group + 1} of {groups}: {type(err).__name__}: {_one_line(err)} ({unread} rows unread)",
                records=max(unread, 1),
            )
        index += group_rows


def _iter_text(fh, url: str, config: SourceConfig) -> Iterator[Document | Reject]:
    yield _document(url, 0, posixpath.basename(url), fh.read())


_READERS = {"jsonl": _iter_jsonl, "parquet": _iter_parquet, "text": _iter_text}


# What a truncated archive loses besides the record cut in two. gzip and xz give back their text
# up to about the cut; zstd and bz2 decode whole blocks only (a zstd block's sequences are read
# from its end, a bz2 block is one Burrows-Wheeler transform), so the text of the block the cut
# falls in is lost too: a file smaller than one block gives no records at all.
_BLOCK_LOSS = {
    "zstd": "zstd decodes whole blocks of up to 128 KiB, so the records of the cut block are lost too",
    "bz2": "bz2 decodes whole blocks of up to 900 kB, so the records of the cut block are lost too",
}


class ZstdReader(io.RawIOBase):
    """A zstd stream (one or more frames) that raises EOFError when the input ends inside a
    frame. fsspec's zstd reader returns a truncated stream as a shorter, clean one. Each block is
    handed out as soon as it is decoded, so a truncated file gives back every whole block before
    the cut (`_BLOCK_LOSS`)."""

    def __init__(self, raw, block: int = 1 << 16):
        import zstandard

        self._raw = raw
        self._block = block
        self._new = zstandard.ZstdDecompressor().decompressobj
        self._obj = self._new()
        self._in_frame = False  # bytes of an unfinished frame were fed
        self._out = b""
        self._pos = 0  # how much of `_out` was handed out
        self._done = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        if self._pos == len(self._out):
            self._out, self._pos = b"", 0
        while not self._out and not self._done:
            data = self._raw.read(self._block)
            if not data:
                if self._in_frame:
                    raise EOFError(f"zstd stream ends inside a frame (truncated file; {_BLOCK_LOSS['zstd']})")
                self._done = True
                return
            while data:
                self._in_frame = True
                self._out += self._obj.decompress(data)
                data = b""
                if self._obj.eof:  # a frame ended; what follows it is the next frame
                    data = self._obj.unused_data
                    self._obj = self._new()
                    self._in_frame = False

    def readinto(self, buffer) -> int:
        self._fill()
        n = min(len(buffer), len(self._out) - self._pos)
        buffer[:n] = memoryview(self._out)[self._pos : self._pos + n]
        self._pos += n
        return n


def _open(path: str, compression: str | None):
    """A binary stream of the file's decompressed bytes; every compression detects truncation."""
    if compression != "zstd":
        return fsspec.open(path, "rb", compression=compression)
    return _ZstdOpen(path)


class _ZstdOpen:
    def __init__(self, path: str):
        self._file = fsspec.open(path, "rb")

    def __enter__(self):
        # Unbuffered: a read returns what was decoded so far, so the records before a truncation
        # are read before the EOFError (a BufferedReader would drop its partly filled block).
        return ZstdReader(self._file.__enter__())

    def __exit__(self, *exc):
        return self._file.__exit__(*exc)


_TRANSIENT_ERRNOS = frozenset({errno.ECONNRESET, errno.ECONNABORTED, errno.ECONNREFUSED, errno.ETIMEDOUT,
                               errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.ENETRESET,
                               errno.EPIPE, errno.EAGAIN})
# Network errors of the HTTP clients under fsspec's object stores (aiohttp for gcsfs/s3fs/http),
# named so that no client library has to be imported to recognise them.
_TRANSIENT_TYPES = frozenset({"ClientConnectionError", "ServerDisconnectedError", "ServerTimeoutError",
                              "ClientPayloadError", "ConnectionTimeoutError", "SocketTimeoutError"})


def is_transient_io_error(err: BaseException) -> bool:
    """A failure of the connection, not of the bytes: raise it so the runner retries the work.
    Connection resets, timeouts, HTTP 408/429/5xx from an object store (gcsfs's HttpError)."""
    seen = set()
    while err is not None and id(err) not in seen:  # also a cause wrapped by the reader (pyarrow, gzip)
        seen.add(id(err))
        if isinstance(err, (ConnectionError, TimeoutError)):
            return True
        if isinstance(err, OSError) and err.errno in _TRANSIENT_ERRNOS:
            return True
        names = {cls.__name__ for cls in type(err).__mro__}
        if names & _TRANSIENT_TYPES:
            return True
        code = getattr(err, "code", None)
        if "HttpError" in names and isinstance(code, int) and (code in (408, 429) or code >= 500):
            return True
        err = err.__cause__ or err.__context__
    return False


def _file_format(url: str, config: SourceConfig) -> tuple[str, str | None]:
    fmt, compression = split_extension(url)
    return (config.format if config.format != "auto" else fmt), compression


def plan_reads(url: str | bytes, config: SourceConfig) -> list[FileRange]:
    """The work items of one input file: itself, or its pieces when it is an uncompressed JSONL
    or Parquet file over `config.split_bytes` (JSONL by byte ranges, Parquet by runs of row
    groups from its footer). A file whose size or footer cannot be read is one whole item (its
    reader then reports what is wrong); a network failure is raised."""
    whole = [FileRange(url)]
    path, name = file_url(url)
    fmt, compression = _file_format(name, config)
    if compression is not None or fmt not in ("jsonl", "parquet"):
        return whole
    try:
        fs, fs_path = fsspec.core.url_to_fs(path)
        size = fs.size(fs_path)
        if size is None or size <= config.split_bytes:
            return whole
        if fmt == "jsonl":
            step = config.split_bytes
            return [FileRange(url, "jsonl_bytes", start, min(start + step, size)) for start in range(0, size, step)]
        import pyarrow.parquet as pq

        with fs.open(fs_path, "rb") as fh:
            meta = pq.ParquetFile(fh).metadata
        items, start, first_row, run_bytes, row = [], 0, 0, 0, 0
        for group in range(meta.num_row_groups):
            rg = meta.row_group(group)
            if group > start and run_bytes + rg.total_byte_size > config.split_bytes:
                items.append(FileRange(url, "parquet_groups", start, group, first_row))
                start, first_row, run_bytes = group, row, 0
            run_bytes += rg.total_byte_size
            row += rg.num_rows
        items.append(FileRange(url, "parquet_groups", start, meta.num_row_groups, first_row))
        return items
    except Exception as err:
        if is_transient_io_error(err):
            raise
        return whole


def iter_range_records(item: FileRange, config: SourceConfig) -> Iterator[Document | Reject]:
    """The records of one work item from `plan_reads` (a Reject, never an exception, for bad
    bytes; a network failure is raised for the runner to retry)."""
    if item.kind == "file":
        yield from iter_file_records(item.url, config)
        return
    path, url = file_url(item.url)
    emitted = 0
    try:
        with fsspec.open(path, "rb") as fh:
            if item.kind == "jsonl_bytes":
                lines = _range_lines(fh, posixpath.basename(url), item.start, item.stop)
                records = _jsonl_records(lines, url, config)
            else:
                records = _iter_parquet(fh, url, config, (item.start, item.stop), item.first_row)
            for record in records:
                emitted += 1
                yield record
    except Exception as err:
        if is_transient_io_error(err):
            raise
        where = f"bytes {item.start}-{item.stop}" if item.kind == "jsonl_bytes" else f"row groups {item.start + 1}-{item.stop}"
        yield Reject(url, f"{posixpath.basename(url)}@{item.kind}:{item.start}+{emitted}", Reason.CORRUPT_FILE,
                     f"{where}: {type(err).__name__}: {_one_line(err)} (after {emitted} records)")


def first_record_fields(url: str | bytes, config: SourceConfig) -> list[str] | None:
    """The field names of a JSONL file's first record, or a Parquet file's columns; None for a text
    file, or when the first line is not a JSON object (the job rejects it with its reason). For
    checks made before a job starts: it reads one line, or the Parquet footer."""
    path, url = file_url(url)
    fmt, compression = _file_format(url, config)
    if fmt == "parquet" and compression is None:
        import pyarrow.parquet as pq

        with fsspec.open(path, "rb") as fh:
            return list(pq.ParquetFile(fh).schema_arrow.names)
    if fmt != "jsonl":
        return None
    with _open(path, compression) as fh:
        for raw in iter_lines(fh):
            if raw.strip():
                try:
                    record = json.loads(raw.removeprefix(b"\xef\xbb\xbf"))
                except ValueError:
                    return None
                return list(record) if isinstance(record, dict) else None
    return None


def iter_file_records(url: str | bytes, config: SourceConfig) -> Iterator[Document | Reject]:
    """Every record of one input file, as a Document or a Reject (never raises for bad data; a
    network failure is raised for the runner to retry).
    `url` is a string, or the bytes of a local file name that is not UTF-8 (`portable_url`)."""
    path, url = file_url(url)
    fmt, compression = _file_format(url, config)
    if fmt not in _READERS:
        yield Reject(url, posixpath.basename(url), Reason.CORRUPT_FILE, f"unknown file format (expected one of {sorted(FORMATS)})")
        return
    emitted = 0
    try:
        with _open(path, compression) as fh:
            for item in _READERS[fmt](fh, url, config):
                emitted += 1
                yield item
    except Exception as err:  # truncated archive, bad parquet footer, unreadable object, ...
        if is_transient_io_error(err):
            raise
        detail = _one_line(err)
        if isinstance(err, EOFError) and compression in _BLOCK_LOSS and _BLOCK_LOSS[compression] not in detail:
            detail = f"{detail} ({_BLOCK_LOSS[compression]})"
        yield Reject(
            url,
            f"{posixpath.basename(url)}@{emitted}",
            Reason.CORRUPT_FILE,
            f"{type(err).__name__}: {detail} (after {emitted} records)",
        )
