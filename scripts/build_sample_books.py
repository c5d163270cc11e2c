"""Build data/sample/books.jsonl.gz from Debian's R data packages (provenance of the demo books).

The seven public-domain novels ship inside two MIT-licensed Debian packages as R lazy-load
databases. Run once, on a machine with apt and `pip install rdata`:

    mkdir -p /tmp/rpk && cd /tmp/rpk && apt-get update && apt-get download r-cran-janeaustenr r-cran-tokenizers
    python scripts/build_sample_books.py --debs /tmp/rpk --out data/sample/books.jsonl.gz

The texts are kept exactly as shipped (Moby-Dick keeps its Gutenberg licence, CRLF and BOM):
cleaning them is the pipeline's job.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import tempfile
import zlib
from pathlib import Path

import rdata

AUSTEN = ["emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice", "sensesensibility"]


def _lazy_load_objects(data_dir: Path) -> dict[str, object]:
    """Read every object of an R lazy-load database (Rdata.rdx index + Rdata.rdb blobs)."""
    index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress((data_dir / "Rdata.rdx").read_bytes())))
    blob = (data_dir / "Rdata.rdb").read_bytes()
    objects = {}
    for name, (offset, length) in index["variables"].items():
        raw = zlib.decompress(blob[int(offset) + 4 : int(offset) + int(length)])
        objects[name] = rdata.conversion.convert(rdata.parser.parse_data(raw))
    return objects


def _as_text(obj: object) -> str:
    if isinstance(obj, str):
        return obj
    lines = [str(x) for x in list(getattr(obj, "values", obj))]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debs", type=Path, required=True, help="folder holding the two downloaded .deb files")
    parser.add_argument("--out", type=Path, default=Path("data/sample/books.jsonl.gz"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for deb in sorted(args.debs.glob("r-cran-*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        lib = Path(tmp) / "usr/lib/R/site-library"
        austen = _lazy_load_objects(lib / "janeaustenr/data")
        moby = _lazy_load_objects(lib / "tokenizers/data")
        books = [(name, _as_text(austen[name]), "r-cran-janeaustenr") for name in AUSTEN]
        books.append(("mobydick", _as_text(moby["mobydick"]), "r-cran-tokenizers"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0 keeps the archive byte-identical across rebuilds.
    with gzip.GzipFile(args.out, "wb", mtime=0, compresslevel=9) as fh:
        for name, text, package in books:
            fh.write((json.dumps({"id": name, "text": text, "package": package}, ensure_ascii=False) + "\n").encode())
    for name, text, _ in books:
        print(f"{name:18s} {len(text):>10,d} chars")
    print(f"wrote {args.out} ({args.out.stat().st_size:,d} bytes)")


if __name__ == "__main__":
    main()
