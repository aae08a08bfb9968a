"""Image and audio parity through STOCK llama-cpp-python + mtmd, against transformers (issue 2, item 4).

The path anyone gets from llama.cpp today: the converted f32 thinker + mmproj, the prompt rendered
with the GGUF's own chat template (llama-cpp-python's `Jinja2ChatFormatter`) around mtmd's default
media marker, then `mtmd_tokenize` + `mtmd_helper_eval_chunks` (MtmdContext.eval_stock) with mtmd's
default settings. The reference is `Qwen2_5OmniForConditionalGeneration.thinker` on the prompt the HF
processor builds for the same conversation. Bound: last-position logits within 1e-2 of max|logit|.

Where stock mtmd disagrees with the reference the bound stays; the case is a strict expected failure
whose reason carries the measured gap and its cause, and a passing test next to it pins that cause:
- images: mtmd wraps them in the Qwen2-VL strings `<|vision_start|>` / `<|vision_end|>`, which the
  Omni vocabulary does not have (its ids 151652/151653 are `<|vision_bos|>` / `<|vision_eos|>`), so
  each becomes 6 ordinary tokens; and mtmd's default minimum of 8 image tokens upscales small images.
  mtmd's image *embeddings* are right: placed with the reference's tokens and positions they pass.
- audio: mtmd pads to 30 s and encodes 30 s windows with full attention (750 tokens per window), the
  reference encodes 2 s windows of the exact clip (3 s: 75 tokens, 45 s: 1125). mtmd's audio weights
  are right (test_convert_mmproj: 5e-5 on one 30 s window with the reference set to 30 s windows);
  our exact encoder (tests/test_parity_audio_exact.py) passes the same cases.

The helpers here (`audio_clip`, `reference_audio_logits`, ...) are shared with test_parity_audio_exact.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("llama_cpp")

from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from omni_fixtures import build_checkpoint, load_processor, load_reference
from pocketomni.backend import LlamaContext, LlamaModel, MtmdContext
from pocketomni.positions import KIND_IMAGE, ImageSegment, PromptLayout, TextSegment, TokenIds, build_prompt

torch.set_num_threads(1)

RTOL = 1e-2
VARIANTS = ("base", "gqa4", "odd")
IMAGE_SIZES = ((56, 84), (112, 56))  # (height, width), multiples of 28: no resampling on either side
IMAGE_TEXT = "What is in this picture?"
AUDIO_TEXT = "What do you hear?"
SAMPLE_RATE = 16000
IDS = TokenIds()


# ---------------------------------------------------------------------- inputs


def noise_image(h: int, w: int) -> np.ndarray:
    """A deterministic RGB uint8 noise image."""
    return (np.random.default_rng(h * 1000 + w).random((h, w, 3)) * 255).astype(np.uint8)


def audio_clip(seconds: float, seed: int = 11) -> np.ndarray:
    """Deterministic speech-like 16 kHz audio: a gliding, amplitude-modulated tone plus a little noise."""
    n = round(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    freq = 220 + 180 * np.sin(2 * np.pi * 0.15 * t)
    tone = np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.7 * t))
    noise = np.random.default_rng(seed).standard_normal(n)
    return (0.3 * tone + 0.03 * noise).astype(np.float32)


def relative_gap(got: np.ndarray, ref: np.ndarray) -> float:
    """max|got - ref| / max|ref|."""
    return float(np.abs(got - ref).max() / np.abs(ref).max())


# ---------------------------------------------------------------------- reference


@functools.cache
def reference(variant: str):
    """(model, processor) of the tiny checkpoint, loaded once per session."""
    path = build_checkpoint(variant)
    return load_reference(path), load_processor(path)


def _conversation(kind: str, text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": text}]}]


def reference_prompt(variant: str, kind: str, text: str) -> str:
    """The prompt text the HF processor renders for one media item followed by `text`."""
    _, proc = reference(variant)
    return proc.apply_chat_template(_conversation(kind, text), add_generation_prompt=True, tokenize=False)


def _reference_run(variant: str, kind: str, text: str, media) -> tuple[np.ndarray, list[int]]:
    from PIL import Image

    model, proc = reference(variant)
    prompt = reference_prompt(variant, kind, text)
    if kind == "image":
        enc = proc(text=[prompt], images=[Image.fromarray(media)], return_tensors="pt")
    else:
        enc = proc(text=[prompt], audio=[media], return_tensors="pt")
    with torch.no_grad():
        logits = model.thinker(**enc).logits[0, -1].numpy().copy()
    return logits, enc["input_ids"][0].tolist()


@functools.cache
def reference_image_logits(variant: str, h: int, w: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """(last logits, input ids) of the reference on the image prompt."""
    logits, ids = _reference_run(variant, "image", IMAGE_TEXT, noise_image(h, w))
    return logits, tuple(ids)


@functools.cache
def reference_audio_logits(variant: str, seconds: float) -> tuple[np.ndarray, tuple[int, ...]]:
    """(last logits, input ids) of the reference on the audio prompt with `audio_clip(seconds)`."""
    logits, ids = _reference_run(variant, "audio", AUDIO_TEXT, audio_clip(seconds))
    return logits, tuple(ids)


def media_layout(model: LlamaModel, prompt: str, placeholder: str, segment) -> PromptLayout:
    """Our token layout of a reference prompt whose one media placeholder run is `placeholder`."""
    pre, post = prompt.split(placeholder)
    return build_prompt([TextSegment(model.tokenize(pre)), segment, TextSegment(model.tokenize(post))])


# ---------------------------------------------------------------------- stock llama.cpp


def stock_prompt(model: LlamaModel, marker: str, text: str) -> str:
    """What a llama.cpp user sends: the GGUF chat template over a string message holding mtmd's marker."""
    fmt = Jinja2ChatFormatter(model.chat_template, eos_token="<|im_end|>", bos_token="")
    return fmt(messages=[{"role": "user", "content": marker + text}]).prompt


def stock_run(folder, text: str, media: np.ndarray) -> tuple[np.ndarray, list]:
    """Last logits and mtmd's chunk plan for one media item through mtmd's own prompt path."""
    with LlamaModel(folder / "thinker-f32.gguf", n_threads=1) as model, \
            MtmdContext(folder / "mmproj-f32.gguf", model, n_threads=1) as mtmd, \
            LlamaContext(model, n_ctx=4096, n_batch=2048, n_threads=1, kv_f32=True, flash_attn=False) as ctx:
        prompt = stock_prompt(model, mtmd.marker, text)
        plan = mtmd.stock_plan(prompt, [media])
        mtmd.eval_stock(ctx, prompt, [media])
        return ctx.output_logits(), plan


# Measured on the tiny fixtures (llama-cpp-python 0.3.36): relative last-logit gap of the stock path.
IMAGE_GAPS = {
    ("base", 56, 84): "0.52", ("base", 112, 56): "0.44",
    ("gqa4", 56, 84): "0.34", ("gqa4", 112, 56): "0.23",
    ("odd", 56, 84): "0.48", ("odd", 112, 56): "0.51",
}
AUDIO_GAPS = {("base", 3): "0.65", ("base", 45): "0.36", ("gqa4", 3): "0.79", ("gqa4", 45): "0.69",
              ("odd", 3): "0.77", ("odd", 45): "0.99"}
WRAPPER_CAUSE = ("mtmd wraps the image in the Qwen2-VL strings '<|vision_start|>'/'<|vision_end|>', which the Omni "
                 "vocabulary splits into 6 plain tokens each instead of <|vision_bos|>/<|vision_eos|>")
UPSCALE_CAUSE = "; mtmd's default minimum of 8 image tokens also upscales 56x84 to 12 tokens (reference: 6)"


def _image_case(variant: str, h: int, w: int):
    gap = IMAGE_GAPS[(variant, h, w)]
    reason = f"stock mtmd: logits gap {gap} of max|logit| (bound 1e-2): {WRAPPER_CAUSE}"
    if h * w // 784 < 8:
        reason += UPSCALE_CAUSE
    return pytest.param(variant, h, w, id=f"{variant}-{w}x{h}",
                        marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason))


def _audio_case(variant: str, seconds: int):
    gap = AUDIO_GAPS[(variant, seconds)]
    ref_tokens = {3: 75, 45: 1125}[seconds]
    reason = (f"stock mtmd: logits gap {gap} of max|logit| (bound 1e-2): it pads to 30 s windows encoded with full "
              f"attention ({750 * (seconds // 30 + 1)} audio tokens) where the reference encodes 2 s windows of the "
              f"exact clip ({ref_tokens} tokens); our exact encoder passes (test_parity_audio_exact)")
    return pytest.param(variant, seconds, id=f"{variant}-{seconds}s",
                        marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason))


@pytest.mark.parametrize("variant,h,w", [_image_case(v, h, w) for v in VARIANTS for h, w in IMAGE_SIZES])
def test_stock_image_logits_match_reference(converted_tiny, variant: str, h: int, w: int) -> None:
    ref, _ = reference_image_logits(variant, h, w)
    got, plan = stock_run(converted_tiny(variant), IMAGE_TEXT, noise_image(h, w))
    gap = relative_gap(got, ref)
    print(f"{variant} {w}x{h}: stock image logits gap {gap:.3g}, plan {[(k, v) for k, v in plan if k != 'text']}")
    assert gap <= RTOL


@pytest.mark.parametrize("variant,seconds", [_audio_case(v, s) for v in VARIANTS for s in (3, 45)])
def test_stock_audio_logits_match_reference(converted_tiny, variant: str, seconds: int) -> None:
    ref, _ = reference_audio_logits(variant, seconds)
    got, plan = stock_run(converted_tiny(variant), AUDIO_TEXT, audio_clip(seconds))
    gap = relative_gap(got, ref)
    print(f"{variant} {seconds} s: stock audio logits gap {gap:.3g}, plan {[(k, v) for k, v in plan if k != 'text']}")
    assert gap <= RTOL


# ---------------------------------------------------------------------- the causes, pinned


def test_stock_image_prompt_wraps_with_qwen2vl_strings(converted_tiny) -> None:
    """mtmd's tokens around an image are the 6-piece spelling of '<|vision_start|>', not <|vision_bos|>."""
    folder = converted_tiny("base")
    with LlamaModel(folder / "thinker-f32.gguf", n_threads=1) as model, \
            MtmdContext(folder / "mmproj-f32.gguf", model, n_threads=1) as mtmd:
        plan = mtmd.stock_plan(stock_prompt(model, mtmd.marker, IMAGE_TEXT), [noise_image(56, 84)])
        start, end = model.tokenize("<|vision_start|>"), model.tokenize("<|vision_end|>")
        _, ref_ids = reference_image_logits("base", 56, 84)
    assert [k for k, _ in plan] == ["text", "image", "text"]
    assert len(start) == len(end) == 6 and IDS.vision_bos not in start
    assert plan[0][1][-6:] == start and plan[2][1][:6] == end
    assert plan[1][1] == 12 and ref_ids.count(IDS.image) == 6  # upscaled to mtmd's 8-token minimum
    assert ref_ids[ref_ids.index(IDS.image) - 1] == IDS.vision_bos


@pytest.mark.parametrize("variant", ["base", "odd"])
@pytest.mark.parametrize("h,w", IMAGE_SIZES, ids=lambda s: str(s))
def test_stock_image_embeddings_in_reference_layout(converted_tiny, variant: str, h: int, w: int) -> None:
    """mtmd's own image embeddings (at the reference's size: token limits widened to the reference's
    4 .. 16384), decoded with the reference's tokens and TMRoPE positions, give parity: the gap above is
    the prompt, not the encoder."""
    ref, ref_ids = reference_image_logits(variant, h, w)
    folder = converted_tiny(variant)
    img = noise_image(h, w)
    with LlamaModel(folder / "thinker-f32.gguf", n_threads=1) as model, \
            MtmdContext(folder / "mmproj-f32.gguf", model, n_threads=1, image_min_tokens=4,
                        image_max_tokens=16384) as mtmd, \
            LlamaContext(model, n_ctx=1024, n_batch=1024, n_threads=1, kv_f32=True, flash_attn=False) as ctx:
        emb = mtmd.encode_image(img)
        gw, gh = emb.grid
        layout = media_layout(model, reference_prompt(variant, "image", IMAGE_TEXT),
                              "<|vision_bos|><|IMAGE|><|vision_eos|>", ImageSegment((1, 2 * gh, 2 * gw)))
        assert layout.input_ids.tolist() == list(ref_ids)
        rows = model.embed_tokens(layout.input_ids)
        rows[layout.kinds == KIND_IMAGE] = emb.embd
        got = ctx.decode(embeddings=rows, positions=layout.llama_rows()).last_logits
    gap = relative_gap(got, ref)
    print(f"{variant} {w}x{h}: mtmd image embeddings in the reference layout, logits gap {gap:.3g}")
    assert gap <= RTOL


@pytest.mark.parametrize("seconds", [3, 45])
def test_stock_audio_uses_30s_windows(converted_tiny, seconds: int) -> None:
    """mtmd's audio chunks: 750 tokens per 30 s window; the reference's count follows the exact clip."""
    folder = converted_tiny("base")
    wav = audio_clip(seconds)
    with LlamaModel(folder / "thinker-f32.gguf", n_threads=1) as model, \
            MtmdContext(folder / "mmproj-f32.gguf", model, n_threads=1) as mtmd:
        plan = mtmd.stock_plan(stock_prompt(model, mtmd.marker, AUDIO_TEXT), [wav])
    _, ref_ids = reference_audio_logits("base", seconds)
    chunks = [n for k, n in plan if k == "audio"]
    assert chunks == [750] * (seconds // 30 + 1)
    assert ref_ids.count(IDS.audio) == {3: 75, 45: 1125}[seconds]
    assert plan[0][1][-1] == IDS.audio_bos and plan[-1][1][0] == IDS.audio_eos  # the audio wrapper is right
