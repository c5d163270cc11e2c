"""Throughput of the video pipeline (frames/s) against its parts, and our Flax VQGAN against
diffusers' PyTorch VQModel, on CPU, in one process.

Setup: `--videos` synthetic videos are written with PyAV (`benchmarks/synthetic.py`'s `write_video`:
a bright square moving over a blue gradient, `--width`x`--height`, `--video-fps`, `--video-frames`
frames). A random diffusers `VQModel` with the `--config` shapes (`tiny`: 32px -> 16x16 codes;
`amused`: the aMUSEd 256px VQ-GAN shapes) is saved with `save_pretrained` and loaded into ours with
`load_diffusers_vqmodel`, so both frameworks run the same weights. The same weights are saved in
our layout (`save_params`) for the pipeline.

Timed, each best of `--repeats` unless noted:

- **decode**: `iter_video_frames` over every video, frames sampled at `--fps` (at most `--frames`
  per video), `--batch` per decord call, resized + center-cropped to `--frame-size`.
- **encode (ours)**: `VQGAN.encode` on exactly those frames, jitted batch `--batch`, after a
  warm-up call that compiles (its time is printed on its own line).
- **encode (diffusers)**: `model.encode(x).latents` + `model.quantize(latents)` under `no_grad`,
  fp32, `torch.set_num_threads(--torch-threads)`, same frames in batches of `--batch` (the
  uint8 -> [-1, 1] float conversion is inside both timings), after one warm-up batch. The share of
  codes on which the two agree is printed as a sanity check.
- **pipeline**: `run_video` on DirectRunner (in_memory) over a manifest of the same videos, same
  sampling, frame size and batch, timed once end to end: Beam start-up, reading the manifest,
  decode, VQGAN load + a fresh jit compile inside the DoFn, encode, layout, packing, shards and
  the manifest. `--skip-pipeline` leaves it out (for slow configs).

    python benchmarks/video_throughput.py                         # tiny, 32px, ~1 min on 2 CPUs
    python benchmarks/video_throughput.py --config amused --frames 4 --videos 2 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as `python benchmarks/video_throughput.py`: the repo root, for `benchmarks.*`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import best_of, cpu_model, load_average  # noqa: E402
from curation.video import iter_video_frames, sample_indices  # noqa: E402
from curation.vqgan import VQGAN, VQGANConfig, load_diffusers_vqmodel, save_params  # noqa: E402

DEMO_TOKENIZER = "package:mistral_common/data/tokenizer.model.v1"
IN_MEMORY = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=["tiny", "amused"], default="tiny")
    p.add_argument("--frame-size", type=int, default=None, help="default: 32 (tiny), 256 (amused); must give 16x16 codes for the pipeline")
    p.add_argument("--batch", type=int, default=8, help="frames per decord call and per jitted / torch encode batch")
    p.add_argument("--videos", type=int, default=4, help="synthetic videos written with PyAV")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=180)
    p.add_argument("--video-fps", type=int, default=10)
    p.add_argument("--video-frames", type=int, default=60)
    p.add_argument("--fps", type=float, default=2.0, help="sampling rate (frames per second of video)")
    p.add_argument("--frames", type=int, default=512, help="at most this many sampled frames per video (max_frames)")
    p.add_argument("--repeats", type=int, default=3, help="best of N for decode and both encoders")
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--skip-pipeline", action="store_true")
    p.add_argument("--skip-torch", action="store_true")
    args = p.parse_args(argv)
    size = args.frame_size or (32 if args.config == "tiny" else 256)
    repeats = max(1, args.repeats)  # --repeats 0 still times one call
    load_before = load_average()
    started = datetime.now(UTC)

    import jax

    from benchmarks.synthetic import write_video

    work = Path(tempfile.mkdtemp(prefix="video-bench-"))
    t0 = time.perf_counter()
    paths = [write_video(work / f"v{i}.mp4", args.width, args.height, n=args.video_frames, fps=args.video_fps)
             for i in range(args.videos)]
    write_s = time.perf_counter() - t0

    # --- weights: a random diffusers VQModel, loaded into ours ----------------------------------
    import torch
    from diffusers import VQModel as TorchVQModel

    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    ours_cfg = VQGANConfig.tiny() if args.config == "tiny" else VQGANConfig.amused_256()
    dcfg = {k: v for k, v in ours_cfg.to_diffusers_config().items() if not k.startswith("_")}
    tmodel = TorchVQModel(**dcfg).eval()
    tmodel.save_pretrained(work / "diffusers_vq")
    config, params = load_diffusers_vqmodel(work / "diffusers_vq")
    save_params(work / "vqgan", config, params)
    h, w = config.code_shape(size, size)

    # --- decode alone -----------------------------------------------------------------------------
    def idx(n, fps):
        return sample_indices(n, fps, target_fps=args.fps, max_frames=args.frames)

    def decode_all():
        return np.concatenate([b for path in paths for b in iter_video_frames(path, idx, args.batch, size)])

    decode_s, frames = best_of(decode_all, repeats)
    n = len(frames)

    # --- encode alone (ours) -------------------------------------------------------------------
    vq = VQGAN(config, params, batch_size=args.batch)
    t0 = time.perf_counter()
    vq.encode(frames[: args.batch])
    compile_s = time.perf_counter() - t0
    encode_s, codes = best_of(lambda: vq.encode(frames), repeats)

    # --- encode (diffusers, same weights, same batch) --------------------------------------------
    torch_s = agree = None
    if not args.skip_torch:
        def torch_encode():
            out = []
            with torch.no_grad():
                for s in range(0, n, args.batch):
                    x = torch.from_numpy(frames[s : s + args.batch]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
                    lat = tmodel.encode(x).latents
                    _, _, (_, _, ids) = tmodel.quantize(lat)
                    out.append(ids.reshape(-1, h, w).numpy())
            return np.concatenate(out)

        with torch.no_grad():  # warm-up: one batch
            x = torch.from_numpy(frames[: args.batch]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            tmodel.quantize(tmodel.encode(x).latents)
        torch_s, tcodes = best_of(torch_encode, repeats)
        agree = float((tcodes == codes).mean())

    # --- the whole pipeline -------------------------------------------------------------------
    pipe_s = manifest = None
    if not args.skip_pipeline:
        from pipelines.config import VideoConfig
        from pipelines.launch import run_video

        rows = [{"id": p.stem, "video": p.name, "text": "A bright square moves across a blue gradient."} for p in paths]
        (work / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        cfg = VideoConfig.model_validate({
            "inputs": [str(work / "manifest.jsonl")], "output": str(work / "out"), "tokenizer": DEMO_TOKENIZER,
            "vqgan": str(work / "vqgan"), "stages": ["v8k=8192:0-"], "fps": args.fps, "max_frames": args.frames,
            "frame_size": size, "encode_batch": args.batch,
        })
        t0 = time.perf_counter()
        manifest = run_video(cfg, IN_MEMORY)
        pipe_s = time.perf_counter() - t0
        if manifest["kept"] != len(paths):
            print(f"WARNING: pipeline kept {manifest['kept']} of {len(paths)} videos", file=sys.stderr)

    load_after = load_average()

    # --- report ----------------------------------------------------------------------------------
    print(f"\n## Video throughput (CPU) — config {args.config}, {size}px, batch {args.batch}")
    print(f"\n{started:%Y-%m-%d %H:%M} UTC; {cpu_model()}, nproc {os.cpu_count()}; jax {jax.__version__} "
          f"({jax.devices()[0].platform}), torch {torch.__version__} ({args.torch_threads} threads); "
          f"load avg before {load_before}, after {load_after}")
    print(f"\n{args.videos} videos {args.width}x{args.height}, {args.video_fps} fps, {args.video_frames} frames "
          f"(written in {write_s:.2f} s); sampled at {args.fps} fps, <= {args.frames} per video -> {n} frames; "
          f"codes {h}x{w}; best of {args.repeats}")
    print(f"\nours: first encode call (jit compile + 1 batch) {compile_s:.2f} s")
    print("\n| step | time (s) | frames/s |")
    print("|---|---:|---:|")
    print(f"| decode + resize ({size}px) | {decode_s:.3f} | {n / decode_s:.1f} |")
    print(f"| VQGAN encode (ours, Flax/JAX, jitted) | {encode_s:.3f} | {n / encode_s:.1f} |")
    if torch_s is not None:
        print(f"| VQGAN encode (diffusers VQModel, torch) | {torch_s:.3f} | {n / torch_s:.1f} |")
    print(f"| decode + encode (ours), sum | {decode_s + encode_s:.3f} | {n / (decode_s + encode_s):.1f} |")
    if pipe_s is not None:
        print(f"| pipeline (run_video, DirectRunner in_memory, once) | {pipe_s:.3f} | {n / pipe_s:.1f} |")
    if torch_s is not None:
        print(f"\nencode time diffusers / ours: {torch_s / encode_s:.2f}x "
              f"(>1: ours faster); codes agree on {agree:.1%} of positions")
    if pipe_s is not None:
        over = pipe_s - decode_s - encode_s
        print(f"pipeline - (decode + encode): {over:.2f} s ({over / (decode_s + encode_s):.0%} of the parts); "
              f"of which a jit compile like the warm-up is ~{compile_s:.2f} s; "
              f"pipeline excluding that: {n / max(pipe_s - compile_s, 1e-9):.1f} frames/s")
        print(f"pipeline manifest: read {manifest['read']}, kept {manifest['kept']}, rejected {manifest['rejected_total']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
