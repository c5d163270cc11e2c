"""Vision-language training: the vision vocabulary and heads, the loss split, masks and segments,
init from a text checkpoint, data checks, and a toy model learning from shards of real clips."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from curation.packing import SegmentRef, StageSegment, pack_segments
from curation.vision_layout import DEFAULT_VISION_VOCAB, UnifiedVocab, layout_video
from training import checkpoint as ckpt
from training.config import TrainConfig
from training.data import DataMismatchError, StageData, open_batches
from training.model import LlamaModel, ModelConfig, init_params, output_kernel, vision_output_kernel
from training.loss import combine_losses, next_token_nll
from training.train import train
from training.vision import expected_vision_metadata, grow_vision_params, with_vision

pytest.importorskip("decord")

TOY = ModelConfig.preset("toy", vocab_size=512)
ONE_DEVICE = "dp=1,fsdp=1,tp=1,sp=1"
SIZE = 32  # the small VQGAN turns 32x32 frames into 16x16 codes, as the real one does 256x256


def _video_row(rng, frames: int = 2, text_vocab: int = 512):
    """One laid-out video example in the separate layout: text, <vision> frames </vision>, text."""
    codes = [rng.integers(0, 8192, (16, 16)) for _ in range(frames)]
    return layout_video(codes, rng.integers(3, text_vocab, 5), rng.integers(3, text_vocab, 6), [7], [8])


def _batch(tokens, vision, loss, segments=None):
    t = len(tokens)
    seg = np.ones(t, np.int32) if segments is None else segments
    return {"input_ids": jnp.asarray(tokens[None], jnp.int32), "positions": jnp.arange(t, dtype=jnp.int32)[None],
            "segment_ids": jnp.asarray(seg[None]), "loss_mask": jnp.asarray(loss[None], jnp.float32),
            "vision_mask": jnp.asarray(vision[None], jnp.uint8)}


def test_each_head_is_scored_only_where_its_modality_comes_next():
    model = with_vision(TOY, "separate")
    params = init_params(model, jax.random.key(0))
    tokens, vision, loss = _video_row(np.random.default_rng(0))
    batch = _batch(tokens, vision, np.ones_like(loss))
    hidden = LlamaModel(model).apply({"params": params}, batch["input_ids"], batch["positions"], batch["segment_ids"],
                                     batch["vision_mask"], return_hidden=True)
    text_k, vision_k = output_kernel(model, params), vision_output_kernel(model, params)
    n = len(tokens)  # one loss chunk: the row length is not a round number
    sums, counts = next_token_nll(hidden, text_k, batch, chunk=n, sp=1, vision_kernel=vision_k)
    # Next-token targets: every vision token but the first one is predicted from the previous position.
    assert int(counts[1]) == int(vision.sum()) and int(counts[0]) == len(tokens) - 1 - int(vision.sum())

    # Changing the vision head moves only the vision sum; the text head only the text sum.
    sums_v, _ = next_token_nll(hidden, text_k, batch, n, 1, vision_k * 3.0)
    sums_t, _ = next_token_nll(hidden, text_k * 3.0, batch, n, 1, vision_k)
    assert sums_v[0] == sums[0] and sums_v[1] != sums[1]
    assert sums_t[1] == sums[1] and sums_t[0] != sums[0]

    # The sums are the full-logits cross-entropies, each head over its own targets.
    text_logits, vision_logits = LlamaModel(model).apply({"params": params}, batch["input_ids"], batch["positions"],
                                                         batch["segment_ids"], batch["vision_mask"])
    targets, next_is_vision = tokens[1:], vision[1:] > 0
    nll = lambda logits, t: jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, t[:, None], -1)[:, 0]  # noqa: E731
    want_text = nll(text_logits[0, :-1][~next_is_vision], targets[~next_is_vision]).sum()
    want_vision = nll(vision_logits[0, :-1][next_is_vision], targets[next_is_vision]).sum()
    np.testing.assert_allclose(sums, [want_text, want_vision], rtol=1e-5)

    parts = combine_losses(sums, counts, (0.5, 0.5))
    np.testing.assert_allclose(parts["loss"], 0.5 * sums[0] / counts[0] + 0.5 * sums[1] / counts[1], rtol=1e-6)


def test_unified_vocabulary_splits_the_loss_by_vision_mask():
    model = with_vision(TOY, "unified")
    vocab = UnifiedVocab(text_vocab_size=TOY.vocab_size)
    assert model.vocab_size == vocab.size and expected_vision_metadata(model)["eof"] == vocab.eof
    rng = np.random.default_rng(1)
    tokens, vision, loss = layout_video([rng.integers(0, 8192, 256)], rng.integers(3, 512, 4), rng.integers(3, 512, 4),
                                        vocab=vocab)
    params = init_params(model, jax.random.key(1))
    batch = _batch(tokens, vision, np.ones_like(loss))
    logits = LlamaModel(model).apply({"params": params}, batch["input_ids"], batch["positions"], batch["segment_ids"])
    hidden = LlamaModel(model).apply({"params": params}, batch["input_ids"], batch["positions"], batch["segment_ids"],
                                     return_hidden=True)
    sums, counts = next_token_nll(hidden, output_kernel(model, params), batch, chunk=len(tokens))
    per = jax.nn.logsumexp(logits[0, :-1], -1) - jnp.take_along_axis(logits[0, :-1], jnp.asarray(tokens[1:, None]), -1)[:, 0]
    v = vision[1:] > 0
    np.testing.assert_allclose(sums, [per[~v].sum(), per[v].sum()], rtol=1e-5)
    assert int(counts[1]) == 257


@pytest.mark.parametrize("layout,init", [("separate", "normal"), ("separate", "text_mean"), ("unified", "normal")])
def test_text_checkpoint_grows_vision_tables_without_changing_text_logits(layout, init):
    text_params = init_params(TOY, jax.random.key(2))
    model = with_vision(TOY, layout)
    params = grow_vision_params(text_params, TOY, model, jax.random.key(3), init)
    shapes = jax.tree.map(lambda x: x.shape, init_params(model, jax.random.key(0)))
    assert jax.tree.map(lambda x: x.shape, params) == shapes
    ids = jnp.asarray(np.random.default_rng(2).integers(0, 512, (2, 40)), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(40, dtype=jnp.int32), (2, 40))
    want = LlamaModel(TOY).apply({"params": text_params}, ids, pos)
    got = LlamaModel(model).apply({"params": params}, ids, pos, None, jnp.zeros_like(ids))
    got_text = got[0] if layout == "separate" else got[..., : TOY.vocab_size]
    np.testing.assert_allclose(got_text, want, rtol=1e-6, atol=1e-6)
    if init == "text_mean":
        np.testing.assert_allclose(params["vision_embed"]["embedding"].mean(0),
                                   text_params["embed_tokens"]["embedding"].mean(0), atol=0.02)


def test_a_video_packed_beside_a_book_never_sees_it():
    """One packed row: a video example, then a text document. The video's logits equal those of
    the video alone; changing the book changes nothing in the video's span. (Ring attention gives
    the dense result with segment ids: tests/test_ring_attention.py, test_train.py.)"""

    model = with_vision(TOY, "separate")
    params = init_params(model, jax.random.key(4))
    rng = np.random.default_rng(4)
    tokens, vision, loss = _video_row(rng, frames=1)
    length = 320

    def row(book):
        segments = [StageSegment("s", SegmentRef("v", "v", 0, len(tokens)), "v", tokens, loss, vision),
                    StageSegment("s", SegmentRef("b", "b", 0, len(book)), "b", book)]
        arrays = pack_segments(segments, length)
        return {k: jnp.asarray(getattr(arrays, k)) for k in ("input_ids", "positions", "segment_ids", "vision_mask")}

    def logits(r):
        return LlamaModel(model).apply({"params": params}, r["input_ids"], r["positions"], r["segment_ids"], r["vision_mask"])

    a, b = row(rng.integers(3, 512, 40)), row(rng.integers(3, 512, 40))
    span = np.asarray(a["segment_ids"][0]) == np.asarray(a["segment_ids"][0])[np.asarray(a["vision_mask"][0]) > 0][0]
    assert span.sum() == len(tokens) and (np.asarray(a["vision_mask"][0])[span] == vision).all()
    alone = LlamaModel(model).apply({"params": params}, jnp.asarray(tokens[None]), jnp.arange(len(tokens))[None], None,
                                    jnp.asarray(vision[None]))
    for la, lb in zip(logits(a), logits(b)):  # text and vision logits
        np.testing.assert_allclose(la[0][span], lb[0][span], rtol=1e-5, atol=1e-5)
    for la, lw in zip(logits(a), alone):
        np.testing.assert_allclose(la[0][span], lw[0], rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# Real shards from the sample clips
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_shards(tmp_path_factory):
    """The video pipeline on Big Buck Bunny and bikes (4 fps, one frame an example, then a one-word
    caption naming the clip) with a small random VQGAN, in the separate layout: 61 rows of 320."""
    from curation.vqgan import VQGANConfig, init_params as vqgan_params, save_params
    from pipelines.config import VideoConfig
    from pipelines.launch import run_video
    from tests.conftest import DEMO_TOKENIZER, REPO

    folder = tmp_path_factory.mktemp("clips")
    videos = REPO / "data" / "sample" / "videos"
    captions = {"bigbuckbunny": "Rabbit.", "bikes": "Cyclists."}
    (folder / "clips.jsonl").write_text("".join(json.dumps({"id": k, "video": str(videos / f"{k}.mp4"), "text": v}) + "\n"
                                                for k, v in captions.items()))
    config = VQGANConfig.tiny()
    save_params(folder / "vqgan", config, vqgan_params(config, seed=1, image_size=SIZE))
    cfg = VideoConfig.model_validate({
        "inputs": [str(folder / "clips.jsonl")], "output": str(folder / "out"),
        "tokenizer": DEMO_TOKENIZER, "vqgan": str(folder / "vqgan"), "stages": ["v320=320:0-"], "fps": 4.0,
        "frame_size": SIZE, "text_position": "after",
    })
    manifest = run_video(cfg, ["--runner=DirectRunner", "--direct_running_mode=in_memory"])
    assert manifest["kept"] == 2
    return folder / "out"


@pytest.fixture(scope="module")
def book_320_shards(tmp_path_factory, sample_books):
    """Book text at the video stage's length: two excerpts of the sample novels, 320-token rows."""
    from pipelines.config import BooksConfig
    from pipelines.launch import run_books
    from tests.conftest import DEMO_TOKENIZER

    folder = tmp_path_factory.mktemp("books-320")
    rows = [{"id": b["id"], "text": b["text"][:40_000]} for b in sample_books[:2]]
    (folder / "books.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = BooksConfig.model_validate({"inputs": [str(folder / "books.jsonl")], "output": str(folder / "out"),
                                         "tokenizer": DEMO_TOKENIZER, "stages": ["b320=320:300-"]})
    assert run_books(config, ["--direct_running_mode=in_memory"])["kept"] == 2
    return folder / "out"


def test_data_checks_refuse_other_layouts_and_mix_with_text(clip_shards, book_320_shards, tmp_path):
    text_model, separate = ModelConfig.preset("toy"), with_vision(ModelConfig.preset("toy"), "separate")
    data = StageData.open(str(clip_shards / "v320"))
    with pytest.raises(DataMismatchError, match="text-only"):
        data.check_compatible(320, text_model.vocab_size, vision=expected_vision_metadata(text_model))
    unified = with_vision(ModelConfig.preset("toy"), "unified")
    with pytest.raises(DataMismatchError, match="layout 'separate' != model's 'unified'"):
        data.check_compatible(320, unified.vocab_size, vision=expected_vision_metadata(unified))
    data.check_compatible(320, separate.vocab_size, vision=expected_vision_metadata(separate))

    # Video rows and book rows mixed by ratio: book rows carry an all-zero vision mask.
    mix = f"{clip_shards / 'v320'}@0.5,{book_320_shards / 'b320'}@0.5"
    _, batches = open_batches(mix, 4, 0, 320, separate.vocab_size, None, expected_vision_metadata(separate))
    batch = batches.next_rows().read()
    assert [bool(v.any()) for v in batch["vision_mask"]] == [True, True, False, False]
    with pytest.raises(DataMismatchError, match="v320: .*text-only"):  # every source is checked, and named
        open_batches(mix, 4, 0, 320, text_model.vocab_size, None, None)

    # The trainer runs on the mixture: text-only batches' vision term is zero, not NaN.
    config = TrainConfig(data=mix, out=str(tmp_path / "mix"), vision_layout="separate", seq_len=320, global_batch=4,
                         steps=2, mesh=ONE_DEVICE, attention="dense", progress=False, checkpoint_every=2)
    history = train(config)["history"]
    assert all(np.isfinite(h["loss"]) and h["vision_tokens"] > 0 for h in history)


def _text_checkpoint(tmp_path):
    """A (random) text model's params checkpoint, standing in for a trained text stage."""
    config = ModelConfig.preset("toy", max_position_embeddings=320)
    return str(ckpt.save_params(tmp_path / "text" / "final", config, init_params(config, jax.random.key(7))))


def test_a_caption_is_a_learned_caption_or_its_tail():
    assert said_a_caption("prompt: x\nnew token ids: 1,2\noutput: Cyclists.\n")
    assert said_a_caption("new token ids: 2581,28723,2\noutput: bit.\n")  # "Rab|bit|." without its first token
    assert not said_a_caption("new token ids: 28723,2\noutput: .\n")  # one token: any caption's end
    assert not said_a_caption("new token ids: 2581,28723\noutput: bit.\n")  # no EOS: not a finished caption
    assert not said_a_caption("new token ids: 272,2\noutput: the\n")


def test_vision_problems_read_the_typed_shard_metadata():
    """The check reads curation.shards.ShardMetadata (the one reader of the schema metadata)."""
    from curation.shards import ShardMetadata
    from curation.vision_layout import vocab_metadata
    from training.vision import vision_problems

    separate, unified = with_vision(TOY, "separate"), with_vision(TOY, "unified")
    raw = {"longctx.length": "320", "longctx.vision": json.dumps(vocab_metadata(DEFAULT_VISION_VOCAB))}
    shard = ShardMetadata.parse(raw)
    assert vision_problems(shard, expected_vision_metadata(separate)) == []
    problems = vision_problems(shard, expected_vision_metadata(unified))
    assert "vision layout 'separate' != model's 'unified'" in problems
    assert vision_problems(shard, None) == [
        "shards hold 'separate' vision tokens but the model is text-only (set vision_layout)"]
    text_shard = ShardMetadata.parse({"longctx.length": "320"})
    assert vision_problems(text_shard, None) == [] == vision_problems(text_shard, expected_vision_metadata(separate))
    with pytest.raises(ValueError, match="longctx.vision is not JSON"):  # a broken record: one line naming the key
        ShardMetadata.parse({"longctx.length": "320", "longctx.vision": "{not json"})


def said_a_caption(out: str) -> bool:
    """Whether `longctx generate`'s output is a caption the toy model learned: "Rabbit." or
    "Cyclists.", or the last two or more of a caption's tokens and then EOS. Inside the full suite
    the toy model (150 steps) once skipped a caption's first token and wrote "bit." + EOS; the tail
    of a learned caption is still that caption, which a model that learned nothing does not write."""
    if "Cyclists" in out or "Rabbit" in out:
        return True
    from curation.tokenize import load_tokenizer
    from tests.conftest import DEMO_TOKENIZER

    tok, info = load_tokenizer(DEMO_TOKENIZER)
    line = next((ln for ln in out.splitlines() if ln.startswith("new token ids: ")), "")
    ids = [int(i) for i in line.removeprefix("new token ids: ").split(",") if i]
    if len(ids) < 3 or ids[-1] != info.eos_id:
        return False
    body = ids[:-1]
    return any(caption[-len(body):] == body for caption in (tok.encode(c).ids for c in ("Rabbit.", "Cyclists.")))


def test_toy_vision_language_model_learns_from_real_clips(clip_shards, tmp_path, capsys):
    """Rows hold a frame of one clip and then its caption, "Rabbit." or "Cyclists.". Both losses
    fall by the stated margins, and `longctx generate` on a real clip (and on a still of it) writes
    a caption the model learned (`said_a_caption`). Which clip it names is not asserted: in
    isolated runs the model named the right clip for 52-61 of the 61 rows after 150 steps, but
    inside the full suite it can still answer the majority caption (40 of 61), so that is a
    measurement, not a test."""
    config = TrainConfig(
        data=str(clip_shards / "v320"), out=str(tmp_path / "run"), init_from=_text_checkpoint(tmp_path),
        vision_layout="separate", seq_len=320, global_batch=8, steps=150, lr=2e-2, warmup_steps=5, loss_chunk=64,
        mesh=ONE_DEVICE, attention="dense", progress=False, checkpoint_every=150, seed=0,
    )
    result = train(config)
    history = result["history"]
    first, last = history[0], history[-5:]
    assert first["vision_loss"] > 8.5 and first["text_loss"] > 9.5  # ~ln(8448) and ~ln(32000) at init
    assert np.mean([h["vision_loss"] for h in last]) < first["vision_loss"] - 3.0
    assert np.mean([h["text_loss"] for h in last]) < first["text_loss"] - 6.0
    assert all(h["loss"] == pytest.approx(0.5 * h["text_loss"] + 0.5 * h["vision_loss"], rel=1e-5) for h in history)
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"text_loss", "vision_loss", "vision_tokens"} <= set(metrics)

    model, _ = ckpt.load_params(result["final"])
    assert model.vision_layout == "separate" and model.vision_vocab_size == DEFAULT_VISION_VOCAB.size

    # `longctx generate` on the real clips: decoded, encoded and laid out by the pipeline's code.
    from longctx.cli import main
    from tests.conftest import DEMO_TOKENIZER, REPO

    # --frame-size is read from the media (--video, --image); --generate-vision draws at the VQGAN's own size.
    generating = ["generate", "--checkpoint", result["final"], "--tokenizer", DEMO_TOKENIZER, "--vqgan",
                  str(clip_shards.parent / "vqgan"), "--prompt", ""]
    common = [*generating, "--frame-size", str(SIZE)]
    for clip in ("bikes", "bigbuckbunny"):
        capsys.readouterr()
        assert main([*common, "--video", str(REPO / "data" / "sample" / "videos" / f"{clip}.mp4"), "--frames", "1"]) == 0
        out = capsys.readouterr().out
        # The model captions a frame of the real clip with one of the captions it learned.
        # BOS, <vision> (3 text ids), 257 vision tokens, </vision> (3 text ids)
        assert "prompt: 1 frame(s), 264 tokens (257 vision)" in out and said_a_caption(out), out

    from PIL import Image

    from curation.video import iter_video_frames

    # An image file goes through the same path (decoded, resized, encoded, laid out as one frame).
    frame = next(iter_video_frames(str(REPO / "data" / "sample" / "videos" / "bikes.mp4"), lambda n, fps: np.array([n // 2]), 1, 96))
    Image.fromarray(frame[0]).save(tmp_path / "bikes.png")
    capsys.readouterr()
    assert main([*common, "--image", str(tmp_path / "bikes.png")]) == 0
    out = capsys.readouterr().out
    assert "prompt: 1 frame(s), 264 tokens (257 vision)" in out and said_a_caption(out), out

    # Two generated frames: one PNG each (the model may well draw the same frame twice) ...
    capsys.readouterr()
    assert main([*generating, "--generate-vision", "2", "--vision-out", str(tmp_path / "frame.png")]) == 0
    assert "wrote 2 generated frame(s)" in capsys.readouterr().out
    for i in range(2):
        with Image.open(tmp_path / f"frame-{i:03d}.png") as img:
            assert img.size == (SIZE, SIZE) and img.mode == "RGB"
    assert not (tmp_path / "frame.png").exists()
    # ... and a GIF that shows both for 250 ms each (identical frames fold into one 500 ms frame).
    gif = tmp_path / "frames.gif"
    assert main([*generating, "--generate-vision", "2", "--vision-out", str(gif)]) == 0
    with Image.open(gif) as img:
        durations = []
        for i in range(img.n_frames):
            img.seek(i)
            durations.append(img.info["duration"])
        assert img.size == (SIZE, SIZE) and sum(durations) == 500 and img.n_frames in (1, 2)


def test_vision_stage_configs_validate():
    """The shipped vision configs load into typed configs whose models read the separate layout."""
    import yaml

    from tests.conftest import REPO
    from training.data import parse_data_mix
    from training.train import load_stage_plan, model_config_for

    plan = load_stage_plan(str(REPO / "configs" / "train" / "lwm-vision.yaml"))
    stages = plan.stage_configs()
    assert [c.seq_len for _, c in stages] == [1024, 8192, 32768, 131072, 1048576]
    for name, config in stages:
        model = model_config_for(config)
        assert model.vision_layout == "separate" and model.vision_vocab_size == DEFAULT_VISION_VOCAB.size, name
        assert abs(sum(w for _, w in parse_data_mix(config.data)) - 1.0) < 1e-9
    assert stages[1][1].init_from == f"{plan.out}/1k/checkpoints/final"
    single = TrainConfig.model_validate(yaml.safe_load((REPO / "configs" / "train" / "vision-1k.yaml").read_text()))
    assert model_config_for(single).has_vision_head
