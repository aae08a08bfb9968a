"""Fidelity of the converter's quantized formats against the lossless file (issue 20 §2).

Usage:
    .venv/bin/python benchmarks/quant_fidelity.py [--shapes thinker-tiny,talker-tiny,thinker-3b,talker-3b]
        [--formats q4_0_pure,q4_0,q4_k_m,q5_k_m,q8_0] [--steps 64] [--t2w /path/token2wav-f16.gguf]

Models: the synthetic decoders of mnn_peer_models (the tiny preset at full depth; 3B widths with the
layer counts of mnn_peer.py), written by our converter's plan and quantized by its quantizer. The
reference is the bf16 intermediate: the synthetic weights are bf16, so that file is exact (an f16 one
would add its own rounding).

Per format, on llama.cpp's CPU backend, 2 threads:
- teacher-forced: the reference decodes `--steps` greedy tokens after a 32-token prompt; the quantized
  file is fed the same sequence; per step the cosine of its logits with the reference's and whether
  its argmax is the reference token (agreement).
- free-running: the quantized file's own greedy tokens; how many match the reference's before the
  first difference (prefix).
- talker only: both free-running code sequences rendered by token2wav (preset fast, same noise seed,
  the synthetic token2wav of the same size), waveform SNR of the quantized one against the reference.
Random weights overstate 4-bit error: trained weights have smoother rows and far larger margins
between the top logits, so argmax flips and code divergence are much rarer on a real model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "2")

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results"

import mnn_peer_models as models
from mnn_peer import DEFAULT_LAYERS, matmul_bits

FORMATS = ["q4_0_pure", "q4_0", "q4_k_m", "q5_k_m", "q8_0"]
LAYERS = {**DEFAULT_LAYERS, "thinker-tiny": 2, "talker-tiny": 2}
NOTE = "random weights overstate 4-bit error"


class Runner:
    """A llama.cpp model + context that returns the last position's logits per decode call."""

    def __init__(self, path: Path, threads: int = 2) -> None:
        import llama_cpp as L

        self.L = L
        L.llama_backend_init()
        self.model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.n_vocab = int(L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model)))
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = 256, 256, 256
        cp.n_threads = cp.n_threads_batch = threads
        cp.no_perf = True
        self.cp = cp
        self.ctx = None

    def reset(self) -> None:
        if self.ctx is not None:
            self.L.llama_free(self.ctx)
        self.ctx = self.L.llama_init_from_model(self.model, self.cp)

    def logits(self, ids: list[int]) -> np.ndarray:
        L = self.L
        arr = (L.llama_token * len(ids))(*ids)
        if L.llama_decode(self.ctx, L.llama_batch_get_one(arr, len(ids))) != 0:
            raise RuntimeError("llama_decode failed")
        return np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,)).astype(np.float64)

    def run(self, prompt: list[int], steps: int, forced: list[int] | None = None,
            limit: int | None = None) -> tuple[list[int], list[np.ndarray]]:
        """Greedy tokens (argmax over the first `limit` ids) and logits; `forced` feeds those tokens instead."""
        self.reset()
        out, lg = [], []
        x = self.logits(prompt)
        for i in range(steps):
            lg.append(x)
            tok = int(x[:limit].argmax())
            out.append(tok)
            if i + 1 < steps:
                x = self.logits([forced[i] if forced is not None else tok])
        return out, lg

    def close(self) -> None:
        if self.ctx is not None:
            self.L.llama_free(self.ctx)
        self.L.llama_model_free(self.model)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def snr_db(ref: np.ndarray, x: np.ndarray) -> float:
    n = min(len(ref), len(x))
    err = float(np.sum((ref[:n] - x[:n]) ** 2))
    return float("inf") if err == 0 else 10 * np.log10(float(np.sum(ref[:n] ** 2)) / err)


def load_t2w(path: Path) -> tuple[Any, Any]:
    from pocketomni.engine.weights import load_token2wav
    from pocketomni.token2wav import Token2Wav

    w = load_token2wav(path)
    tw = Token2Wav.from_weights(w.weights, w.config)
    spk = next(iter(w.speakers.values()))
    return tw, tw.speaker(spk.cond, spk.ref_mel)


def measure(shape: str, formats: list[str], steps: int, work: Path, t2w: Path | None) -> dict[str, Any]:
    layers = LAYERS[shape]
    d = work / f"{shape}-L{layers}"
    bf16 = d / "bf16.gguf"
    if not bf16.is_file():
        models.write_gguf_bf16(shape, layers, d / "bf16.tmp")
        (d / "bf16.tmp").rename(bf16)
    params = models.matmul_params(shape, layers)
    talker = shape.startswith("talker")
    ckpt = models.peer_checkpoint(shape, layers)
    # talker: codes the DiT knows (its num_embeds); thinker: the ordinary BPE ids
    limit = int(ckpt.config["token2wav_config"]["dit_config"]["num_embeds"]) if talker else 151643
    prompt = [(7919 * i + 13) % min(limit, 8000) + 100 for i in range(32)]
    ref = Runner(bf16)
    ref_tok, ref_lg = ref.run(prompt, steps, limit=limit)
    ref.close()
    res: dict[str, Any] = {"layers": layers, "params": params, "steps": steps, "reference": "bf16 (exact)",
                           "formats": {}}
    wave = None
    if talker and t2w is not None:
        tw, spk = load_t2w(t2w)
        t0 = time.perf_counter()
        wave = tw.render(np.array(ref_tok), spk, "fast", seed=0)
        res["t2w_seconds_per_render"] = time.perf_counter() - t0
        # the floor: SNR of an unrelated code sequence (same length, same noise) against the reference
        other = (np.array(ref_tok) * 7 + 1234) % limit
        res["wave_snr_unrelated_db"] = snr_db(wave, tw.render(other, spk, "fast", seed=0))
    for q in formats:
        p = models.quantized(bf16, q, d / f"{q}.gguf")
        r = Runner(p)
        _, lg = r.run(prompt, steps, forced=ref_tok, limit=limit)
        free, _ = r.run(prompt, steps, limit=limit)
        r.close()
        cos = [cosine(a, b) for a, b in zip(lg, ref_lg)]
        agree = [int(a[:limit].argmax()) == t for a, t in zip(lg, ref_tok)]
        prefix = next((i for i, (a, b) in enumerate(zip(free, ref_tok)) if a != b), steps)
        row = {"bits": matmul_bits(p, params["matmul"]), "cosine_mean": float(np.mean(cos)),
               "cosine_min": float(np.min(cos)), "forced_agreement": float(np.mean(agree)),
               "free_prefix": prefix, "free_agreement": float(np.mean([a == b for a, b in zip(free, ref_tok)]))}
        if wave is not None:
            row["wave_snr_db"] = snr_db(wave, tw.render(np.array(free), spk, "fast", seed=0))
        res["formats"][q] = row
        print(shape, q, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    return res


def write_md(data: dict[str, Any], path: Path) -> None:
    md = ["# Quantized formats vs the exact bf16 file (fidelity)", "",
          f"Written by `benchmarks/quant_fidelity.py` (method in its docstring); {data['when']}. "
          f"**Every figure here is on random weights, which overstate 4-bit error** (trained weights give far "
          f"larger margins between top logits). Agreement = share of {data['steps']} greedy steps whose argmax "
          "matches the reference under teacher forcing; prefix = free-running steps identical to the "
          "reference's before the first difference.", ""]
    for shape, s in data["shapes"].items():
        floor = (f" Waveform SNR of an unrelated code sequence (the floor): {s['wave_snr_unrelated_db']:.1f} dB."
                 if "wave_snr_unrelated_db" in s else "")
        md += [f"## {shape} ({s['layers']} layers)", "", f"Reference: {s['reference']}.{floor}", "",
               "| format | bits/weight | logit cosine mean (min) | greedy agreement | free-run prefix | "
               "waveform SNR | note |", "|---|---|---|---|---|---|---|"]
        for q, r in s["formats"].items():
            snr = f"{r['wave_snr_db']:.1f} dB" if "wave_snr_db" in r else "-"
            md.append(f"| {q} | {r['bits']:.2f} | {r['cosine_mean']:.4f} ({r['cosine_min']:.4f}) | "
                      f"{r['forced_agreement']:.2f} | {r['free_prefix']}/{s['steps']} | {snr} | {NOTE} |")
        md.append("")
    path.write_text("\n".join(md) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="thinker-tiny,talker-tiny,thinker-3b,talker-3b")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--work", default="/tmp/mnnpeer")
    ap.add_argument("--t2w-tiny", default="", help="token2wav GGUF of the tiny preset (talker-tiny SNR)")
    ap.add_argument("--t2w-3b", default="", help="token2wav GGUF of the synthetic 3B (talker-3b SNR)")
    a = ap.parse_args()
    data: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "steps": a.steps,
                            "note": NOTE, "shapes": {}}
    out = RESULTS / "quant_fidelity.json"
    for shape in a.shapes.split(","):
        t2w = a.t2w_tiny if shape.endswith("tiny") else a.t2w_3b
        data["shapes"][shape] = measure(shape, a.formats.split(","), a.steps, Path(a.work),
                                        Path(t2w) if t2w else None)
        out.write_text(json.dumps(data, indent=1))
    write_md(data, RESULTS / "quant_fidelity.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
