"""Build tiny random-weight Qwen2.5-Omni checkpoints in the exact `Qwen/Qwen2.5-Omni-7B` file layout.

    build_checkpoint("base") -> Path          # cached, idempotent, safe under concurrent calls
    python -m omni_fixtures.tiny --variant base --out DIR      (run from tests/)
    python tests/omni_fixtures/tiny.py --variant base --out DIR (from anywhere)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `omni_fixtures` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "omni_fixtures"

from omni_fixtures import cache_root
from omni_fixtures.config import VARIANT_SPECS, VARIANTS, Variant, hub_config
from omni_fixtures.processor import write_processor_files
from omni_fixtures.tokenizer import write_tokenizer
from pocketomni.cli.demo import exclusive_lock

__all__ = ["VARIANTS", "build_checkpoint", "fixture_key", "write_checkpoint"]

# Speaker text-bos ids (unused rows of the 152064 thinker vocabulary, like the real spk_dict.pt).
SPEAKER_BOS = {"Chelsie": 151870, "Ethan": 151872}
REF_MEL_FRAMES = {"Chelsie": 300, "Ethan": 260}
CODEC_VALID = 8194  # DiT codec table rows (num_embeds + 1); the talker may only emit these or EOS
CODEC_EOS = (8292, 8294)


def fixture_key() -> str:
    """Hash of the fixture sources, the tiktoken ranks and the torch/transformers versions."""
    import torch
    import transformers

    from omni_fixtures.tokenizer import tiktoken_path

    h = hashlib.sha256()
    from pocketomni.convert import qwen_vocab  # builds the fixture's vocab.json / merges.txt

    for p in [*sorted(Path(__file__).resolve().parent.glob("*.py")), Path(qwen_vocab.__file__)]:
        h.update(p.name.encode() + p.read_bytes())
    h.update(hashlib.sha256(tiktoken_path().read_bytes()).digest())
    h.update(f"{transformers.__version__}|{torch.__version__}".encode())
    return h.hexdigest()[:16]


def _init_weights(model, seed: int) -> None:
    """Deterministic random weights scaled so activations stay O(1) through the tiny stacks."""
    import torch

    g = torch.Generator().manual_seed(seed)
    owner = {f"{m}.{p}" if m else p: type(mod).__name__
             for m, mod in model.named_modules() for p, _ in mod.named_parameters(recurse=False)}
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            kind, leaf = owner[name], name.rsplit(".", 1)[-1]
            if "Snake" in kind:  # SnakeBeta log-scales around exp(0) = 1
                value = 0.2 * noise
            elif "Norm" in kind and leaf == "weight":
                value = 1.0 + 0.1 * noise  # norm gains: non-trivial so a missing gain shows up
            elif leaf == "bias" or p.dim() == 1:
                value = 0.05 * noise
            elif kind == "Embedding":
                value = noise  # embedding tables: unit scale, always followed by a norm or projection
            else:
                value = noise / math.sqrt(math.prod(p.shape[1:]))
            p.copy_(value.to(p.dtype))
        for name, b in sorted(model.named_buffers(), key=lambda kv: kv[0]):
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
        # The talker's codec head may only produce DiT codes or EOS: zero the other rows so their
        # logit (0) stays below the top-k of 8194 random logits and they never win a greedy argmax.
        head = model.talker.codec_head.weight
        keep = torch.zeros(head.shape[0], dtype=torch.bool)
        keep[:CODEC_VALID] = True
        keep[list(CODEC_EOS)] = True
        head[~keep] = 0.0


def _calibrate_vocoder(model, speakers: dict, seed: int, target_std: float = 0.2) -> None:
    """Tame BigVGAN's growth and scale its last conv so a random utterance stays inside [-1, 1].

    With plain fan-in init every upsample stage roughly doubles the signal and the output would sit
    in the final clamp; a clamped waveform hides errors, so aim for std `target_std` instead.
    """
    import torch

    bv = model.token2wav.code2wav_bigvgan_model
    dit = model.token2wav.code2wav_dit_model
    with torch.no_grad():
        for block in bv.resblocks:
            for conv in block.convs2:
                conv.weight.mul_(0.5)
        g = torch.Generator().manual_seed(2000 + seed)
        codes = torch.randint(0, 8193, (1, 24), generator=g)
        spk = speakers["Chelsie"]
        torch.manual_seed(seed)
        mel = dit.sample(spk["cond"].float(), spk["ref_mel"].float(), codes)
        seen = {}
        hook = bv.conv_post.register_forward_hook(lambda mod, i, o: seen.setdefault("y", o))
        bv(mel)
        hook.remove()
        bv.conv_post.weight.mul_(target_std / float(seen["y"].std()))


def _speakers(v: Variant) -> dict:
    """spk_dict.pt content: per speaker the text bos id, the ECAPA-free `cond` and a reference mel."""
    import torch

    g = torch.Generator().manual_seed(1000 + v.seed)
    out = {}
    for name in ("Chelsie", "Ethan"):
        out[name] = {
            "bos_token": SPEAKER_BOS[name],
            "cond": torch.randn(1, 192, generator=g),
            "ref_mel": -5.0 + 2.0 * torch.randn(1, REF_MEL_FRAMES[name], 80, generator=g),
        }
    return out


def _shard_weights(model, out: Path) -> None:
    """Save bf16 sharded safetensors with the hub's key names (thinker.model.layers..., etc.)."""
    import torch

    total = sum(p.numel() * 2 for p in model.parameters())
    model.to(torch.bfloat16)
    # At least 3 shards; the thinker's 152064-row tables dominate and each may sit alone in a shard.
    model.save_pretrained(out, max_shard_size=max(total // 4, 1 << 20), safe_serialization=True)
    (out / "config.json").unlink()  # rewritten below in the hub's own style
    gen = out / "generation_config.json"
    if gen.exists():
        gen.unlink()


def write_checkpoint(variant: str, out: Path) -> Path:
    """Build variant `variant` into the (new or empty) directory `out`; returns `out`."""
    import torch
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    v = VARIANT_SPECS[variant]
    cfg_dict = hub_config(v)
    with torch.random.fork_rng():  # leave the caller's global RNG untouched
        torch.manual_seed(v.seed)
        config = Qwen2_5OmniConfig(**json.loads(json.dumps(cfg_dict)))
        with torch.device("cpu"):
            model = Qwen2_5OmniForConditionalGeneration(config).float().eval()
        _init_weights(model, v.seed)
        speakers = _speakers(v)
        _calibrate_vocoder(model, speakers, v.seed)
    out.mkdir(parents=True, exist_ok=True)
    _shard_weights(model, out)
    (out / "config.json").write_text(json.dumps(cfg_dict, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps({
        "bos_token_id": 151643,
        "do_sample": False,
        "eos_token_id": [151645, 151643],
        "pad_token_id": 151643,
        "transformers_version": "4.50.0.dev0",
    }, indent=2) + "\n")
    torch.save(speakers, out / "spk_dict.pt")
    write_tokenizer(out)
    write_processor_files(out)
    return out


def build_checkpoint(variant: str, root: Path | None = None) -> Path:
    """Path of the tiny checkpoint `variant`, built on first use under `root` (default: the test cache).

    Built into a temporary directory and renamed into place, under a lock, so concurrent callers
    (pytest-xdist, parallel sessions) never see a half-written folder.
    """
    if variant not in VARIANT_SPECS:
        raise KeyError(f"unknown fixture variant {variant!r}; choose one of {VARIANTS}")
    base = Path(root) if root is not None else cache_root() / "omni" / fixture_key()
    final = base / variant
    if (final / "model.safetensors.index.json").exists():
        return final
    with exclusive_lock(base / f".{variant}.lock"):
        if (final / "model.safetensors.index.json").exists():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{variant}-", dir=base))
        try:
            t0 = time.perf_counter()
            write_checkpoint(variant, tmp)
            tmp.chmod(0o755)
            for f in tmp.iterdir():
                f.chmod(0o644)
            seconds = time.perf_counter() - t0
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
            size = sum(f.stat().st_size for f in final.iterdir())
            (base / f"{variant}.build.json").write_text(
                json.dumps({"seconds": round(seconds, 1), "bytes": size}) + "\n")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=VARIANTS, default="base")
    ap.add_argument("--out", type=Path, help="target directory (default: the shared test cache)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.out is None:
        path = build_checkpoint(args.variant)
    else:
        if args.out.exists() and any(args.out.iterdir()):
            ap.error(f"{args.out} exists and is not empty")
        path = write_checkpoint(args.variant, args.out)
    size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    print(f"{args.variant}: {path} ({size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
