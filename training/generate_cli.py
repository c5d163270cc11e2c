"""`longctx generate`: text (or frames) from a params checkpoint, with an optional video or image
in the prompt, laid out as the vision-language shards are."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from rich.console import Console

from curation.vision_layout import CODES_PER_FRAME

# The defaults of flags that only some modes use: their argparse default is None, so a flag given
# where it does nothing can be refused (and a default never is).
MAX_NEW_TOKENS, SEED, MAX_FRAMES, FRAME_SIZE, VISION_OUT = 32, 0, 64, 256, "generated.gif"


def add_generate_parser(commands) -> argparse.ArgumentParser:
    generate = commands.add_parser("generate", help="decode from a params checkpoint (text, or frames with --generate-vision)")
    generate.add_argument("--checkpoint", required=True, help="longctx params checkpoint or HF LLaMA folder")
    prompt = generate.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text (needs --tokenizer)")
    prompt.add_argument("--prompt-ids", help="comma-separated prompt token ids")
    generate.add_argument("--tokenizer", help="tokenizer spec, as for `longctx books`; decodes the output")
    generate.add_argument("--max-new-tokens", type=int, help="text tokens to generate (default 32; not with --generate-vision)")
    generate.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    generate.add_argument("--seed", type=int, help="sampling seed (default 0; only with --temperature above 0)")
    generate.add_argument("--no-bos", action="store_true", help="do not prepend BOS to a text prompt (not with --prompt-ids)")
    media = generate.add_mutually_exclusive_group()
    media.add_argument("--video", help="a video (local path or fsspec URL) placed before the prompt text, as in training")
    media.add_argument("--image", help="an image placed before the prompt text")
    generate.add_argument("--vqgan", help="VQGAN (diffusers VQModel folder or longctx safetensors) for --video/--image/--generate-vision")
    generate.add_argument("--fps", type=float, help="sample the --video at this many frames a second (default 1; not with --frames)")
    generate.add_argument("--frames", type=int, help="sample exactly this many frames of the --video (instead of --fps; not with it)")
    generate.add_argument("--max-frames", type=int, help=f"at most this many frames of the --video (default {MAX_FRAMES})")
    generate.add_argument("--frame-size", type=int, help="--video/--image frames are resized/cropped to this square, the "
                                                         f"VQGAN's input (default {FRAME_SIZE})")
    generate.add_argument("--generate-vision", type=int, metavar="FRAMES",
                          help="write FRAMES frames after the prompt instead of text, decoded by the VQGAN into --vision-out")
    generate.add_argument("--vision-out", help="GIF (one animation) or PNG (one file per frame: NAME-000.png, ...) for "
                                               f"--generate-vision (default {VISION_OUT})")
    return generate


def unused_flag_problem(args: argparse.Namespace) -> str | None:
    """Why a flag the user gave would do nothing in the mode the other flags choose (a text or
    video/image prompt, or --generate-vision), or None. Flags left at their defaults (None, False)
    are never refused."""
    media = "--video" if args.video else "--image" if args.image else None
    if args.generate_vision is not None and media:
        return (f"--generate-vision {args.generate_vision} writes frames after a text prompt, but {media} puts frames in "
                f"the prompt: give one of them")
    if args.vqgan is not None and not (media or args.generate_vision is not None):
        return (f"--vqgan {args.vqgan} needs --video, --image or --generate-vision: it encodes their frames (or decodes "
                "generated ones), and a text prompt uses no VQGAN")
    if args.vision_out is not None and args.generate_vision is None:
        return f"--vision-out {args.vision_out} needs --generate-vision: only generated frames are written to it"
    for flag, value, what in (("--fps", args.fps, "sets the rate its frames are sampled at"),
                              ("--frames", args.frames, "sets how many of its frames are sampled"),
                              ("--max-frames", args.max_frames, "caps how many of its frames are sampled")):
        if value is not None and not args.video:
            return (f"{flag} {value:g} needs --video: it {what}"
                    + ("; an --image is one frame" if args.image else ""))
    if args.frame_size is not None and not media:
        return (f"--frame-size {args.frame_size} needs --video or --image: it sizes the frames the VQGAN encodes"
                + ("; generated frames have the VQGAN's own size" if args.generate_vision is not None else ""))
    if args.no_bos and args.prompt_ids is not None:
        return "--no-bos applies to a --prompt's tokens, but --prompt-ids are used as given: leave the BOS id out of them instead"
    if args.seed is not None and args.temperature == 0:
        return (f"--seed {args.seed} only seeds sampling, but --temperature is 0 (greedy): give --temperature above 0 "
                "to sample, or drop --seed")
    if args.max_new_tokens is not None and args.generate_vision is not None:
        return (f"--max-new-tokens {args.max_new_tokens} counts text tokens, but --generate-vision {args.generate_vision} "
                f"writes frames ({CODES_PER_FRAME + 1} tokens each): drop --max-new-tokens")
    return None


def position_note(config, prompt_tokens: int, new_tokens: int) -> str | None:
    """A note when the decode runs past the positions the model was trained for (RoPE extrapolates,
    so it runs; the output may suffer), or None."""
    total = prompt_tokens + new_tokens
    if total <= config.max_position_embeddings:
        return None
    return (f"note: a {prompt_tokens:,}-token prompt + {new_tokens:,} new tokens = {total:,} positions exceed the "
            f"model's max_position_embeddings ({config.max_position_embeddings:,}): RoPE extrapolates past it; "
            "expect worse output")


def _note(text: str | None) -> None:
    if text:
        print(text, file=sys.stderr, flush=True)


def run_generate(args: argparse.Namespace, console: Console, parser: argparse.ArgumentParser) -> int:
    from curation.tokenize import load_tokenizer
    from training.checkpoint import any_model_config, load_any_params
    from training.generate import check_decode_fits, generate, generate_frames

    from training.hf import check_checkpoint_tokenizer

    vision = args.video or args.image or args.generate_vision
    if vision and not (args.vqgan and args.tokenizer and args.prompt is not None):
        parser.error("--video/--image/--generate-vision need --vqgan, --tokenizer and --prompt")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.generate_vision is not None and args.generate_vision < 1:
        parser.error(f"--generate-vision must be at least 1 frame, got {args.generate_vision}")
    if args.prompt is not None and not args.tokenizer:
        parser.error("--prompt needs --tokenizer (or give --prompt-ids)")
    if args.fps is not None and args.frames is not None:  # one of them samples the frames; the other was ignored
        parser.error(f"--fps {args.fps:g} and --frames {args.frames} are both given, but frames are sampled by one of them: give only one")
    if args.fps is not None and not args.fps > 0:
        parser.error(f"--fps must be above 0, got {args.fps:g}")
    try:
        check_temperature(args.temperature)
    except ValueError as err:
        parser.error(str(err))
    unused = unused_flag_problem(args)  # a flag that would do nothing here is refused, not ignored
    if unused:
        parser.error(unused)
    max_new_tokens = MAX_NEW_TOKENS if args.max_new_tokens is None else args.max_new_tokens
    seed = SEED if args.seed is None else args.seed
    try:
        given_ids = None if args.prompt_ids is None else parse_prompt_ids(args.prompt_ids)  # before the model loads
        if vision:  # a VQGAN path that is not there: one line, before anything loads
            from training.vision_prompt import check_vqgan_path

            check_vqgan_path(args.vqgan)
    except ValueError as err:
        parser.error(str(err))
    tok = info = vqgan = None
    try:
        if args.tokenizer:
            tok, info = load_tokenizer(args.tokenizer)
            # Another tokenizer than the training data's would run and print text read with other ids.
            check_checkpoint_tokenizer(args.checkpoint, info, args.tokenizer)
        bos = None if (info is None or args.no_bos) else info.bos_id
        if args.prompt is not None and not vision:
            ids = ([] if bos is None else [bos]) + tok.encode(args.prompt, add_special_tokens=False).ids
            if not ids:  # the decoder needs a position to start from
                raise ValueError(f"--prompt {args.prompt!r} gives no tokens{' and --no-bos adds no BOS' if args.no_bos else ''}: "
                                 "give some prompt text")
        config = any_model_config(args.checkpoint)  # a run or data folder, a missing path: one line
        if given_ids is not None:
            ids = check_prompt_ids(given_ids, config.vocab_size)
        # A request no device can decode (a KV cache of 10^8 positions) is refused before the
        # weights load. A video or image prompt's length is known once it is encoded: one token for now.
        new_tokens = args.generate_vision * (CODES_PER_FRAME + 1) if args.generate_vision else max_new_tokens
        check_decode_fits(config, 1 if vision else len(ids), new_tokens, what=_request(args, new_tokens, None if vision else len(ids)))
        if vision:  # the VQGAN, and whether it fits the model's vision vocabulary, before the model's weights load
            from training.vision_prompt import check_vqgan_codebook, load_checked_vqgan

            vqgan = load_checked_vqgan(args.vqgan)
            _note(check_vqgan_codebook(config, vqgan.config.num_vq_embeddings, args.vqgan,
                                       generates=args.generate_vision is not None))
        else:
            _note(position_note(config, len(ids), new_tokens))
        config, params = load_any_params(args.checkpoint)
    except ValueError as err:  # training.hf.ModelPathError, TokenizerLoadError, another tokenizer, a prompt, too long
        parser.error(str(err))
    vision_mask = None
    if vision:
        from training.vision_prompt import load_media_codes, save_frames, vision_start_prompt, vision_text_prompt

        try:
            if args.generate_vision:
                ids = vision_start_prompt(config, tok, bos, args.prompt)
                check_decode_fits(config, len(ids), new_tokens, what=_request(args, new_tokens, len(ids)))
                _note(position_note(config, len(ids), new_tokens))
                frames = generate_frames(config, params, ids, args.generate_vision, args.temperature, seed,
                                         codebook_size=vqgan.config.num_vq_embeddings)
                paths = save_frames(vqgan.decode(frames), VISION_OUT if args.vision_out is None else args.vision_out)
                where = paths[0] if len(paths) == 1 else f"{paths[0]} .. {paths[-1].name}"
                console.print(f"wrote {len(frames)} generated frame(s) to {where}")
                return 0
            codes = load_media_codes(vqgan, args.video, args.image, fps=None if args.frames else (1.0 if args.fps is None else args.fps),
                                     frame_count=args.frames, max_frames=MAX_FRAMES if args.max_frames is None else args.max_frames,
                                     frame_size=FRAME_SIZE if args.frame_size is None else args.frame_size)
            ids, vision_mask = vision_text_prompt(config, tok, bos, codes, args.prompt)
            check_decode_fits(config, len(ids), new_tokens, what=_request(args, new_tokens, len(ids)))
            _note(position_note(config, len(ids), new_tokens))
        except ValueError as err:
            parser.error(str(err))
        console.print(f"prompt: {len(codes)} frame(s), {len(ids)} tokens ({sum(vision_mask):,} vision)")
    new = generate(config, params, ids, max_new_tokens, args.temperature, seed,
                   eos_id=info.eos_id if info else None, prompt_vision_mask=vision_mask)
    if tok is not None:  # echo the prompt, as the model saw it (vision codes are not text)
        shown = args.prompt if args.prompt is not None else tok.decode(ids)
        console.print(f"prompt: {shown}", markup=False, highlight=False)
    console.print(f"new token ids: {','.join(map(str, new))}")
    if tok is not None:
        console.print(generated_text_line(tok.decode(new), len(new)), markup=False, highlight=False)
    return 0


def _request(args: argparse.Namespace, new_tokens: int, prompt_tokens: int | None) -> str:
    """The decode asked for, as an error names it (`prompt_tokens` None: not known yet)."""
    asked = (f"--generate-vision {args.generate_vision} ({new_tokens:,} new tokens)"
             if args.generate_vision else f"--max-new-tokens {new_tokens}")
    return asked + ("" if prompt_tokens is None else f" after a {prompt_tokens:,}-token prompt")


def check_temperature(temperature: float) -> None:
    """Refuse a temperature sampling cannot use: negative, or nan/inf (argparse's float() takes them)."""
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"--temperature must be a finite number >= 0 (0 = greedy), got {temperature}")


def parse_prompt_ids(text: str) -> list[int]:
    """--prompt-ids `1,450,4996` as ids; ValueError (one line) for a part that is not a whole
    number, or for no id at all (the decoder needs a position to start from)."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise ValueError(f"--prompt-ids {text!r} names no token id: give comma-separated ids such as 1,450,4996")
    ids = []
    for part in parts:
        try:
            ids.append(int(part))
        except ValueError:
            raise ValueError(f"--prompt-ids {text!r}: {part!r} is not a token id; give comma-separated whole numbers "
                             "such as 1,450,4996") from None
    return ids


def check_prompt_ids(ids: Sequence[int], vocab_size: int) -> list[int]:
    """`ids` when each is in [0, vocab_size); an id outside would be read past (or wrapped around)
    the embedding table and decode to garbage, so it is refused in one line."""
    bad = next((i for i in ids if not 0 <= i < vocab_size), None)
    if bad is not None:
        raise ValueError(f"--prompt-ids: token id {bad} is outside the model's vocabulary; give ids in [0, {vocab_size})")
    return list(ids)


def generated_text_line(text: str, count: int) -> str:
    """What to print for the decoded new tokens: the text, or a sentence saying that there is
    none to see (no tokens, or only whitespace such as 20 newlines, which would print as blank lines)."""
    if count == 0:
        return "output: (no new tokens: the model ended the sequence at once)"
    if text.strip():
        return f"output: {text}"
    tokens = f"{count} new token{'s' if count != 1 else ''}"
    if not text:
        return f"output: (the {tokens} decode to no text: special tokens only)"
    newlines = text.count("\n")
    what = f"{newlines} newline{'s' if newlines != 1 else ''}" if newlines == len(text) else f"{text!r}"
    return f"output: (the {tokens} decode to whitespace only: {what})"
