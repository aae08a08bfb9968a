"""SDK chat vs raw llama-cpp-python on the same GGUF and the same prompt tokens: TTFT and decode tok/s.

Usage:
    .venv/bin/python benchmarks/sdk_vs_llama.py MODEL.gguf [--tokens 64] [--threads 2] [--repeats 3]
    .venv/bin/python benchmarks/sdk_vs_llama.py --synthetic 0.5b --from-thinker TINY_THINKER.gguf

The SDK renders and tokenizes one chat turn (`Omni.load_sync(gguf).chat().send_sync(...)`); the raw
baseline (`llama_cpp.Llama.create_completion`, greedy, streaming) gets exactly the token ids the SDK
prefilled. Both run in this process, alternating, `--repeats` times; medians are reported with the
SDK / raw ratio. TTFT is from the call to the first generated token; decode tok/s counts the tokens
after the first over the time from the first to the last one.

`--synthetic 0.5b` first writes a random-weight q4_k_m thinker with Qwen2.5-0.5B-like shapes (hidden 896,
24 layers) carrying the tokenizer and chat template of `--from-thinker` (e.g. a converted tiny
checkpoint), so the comparison runs on a model whose compute dominates Python overheads.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

SHAPES = {"0.5b": {"hidden": 896, "layers": 24, "heads": 14, "kv_heads": 2, "ff": 4864},
          "1.5b": {"hidden": 1536, "layers": 28, "heads": 12, "kv_heads": 2, "ff": 8960}}
PROMPT = ("Here is a short passage about sailing boats, harbours and the weather on the coast in autumn. " * 6
          + "Write a detailed reply about it.")


def build_synthetic(src: Path, dst: Path, shape: str) -> Path:
    """A random-weight qwen2vl GGUF at `shape` with `src`'s tokenizer and chat template, quantized q4_k_m."""
    import gguf

    from pocketomni.convert.quantize import llama_quantize

    if dst.is_file():
        return dst
    s = SHAPES[shape]
    d, hd = s["hidden"], s["hidden"] // s["heads"]
    reader = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(str(dst) + ".f16", "qwen2vl")
    for key, field in reader.fields.items():
        if key.startswith(("GGUF.", "qwen2vl.", "general.architecture", "general.file_type")):
            continue
        sub = field.types[1] if len(field.types) > 1 else None
        w.add_key_value(key, field.contents(), field.types[0], sub)
    w.add_context_length(32768)
    w.add_embedding_length(d)
    w.add_block_count(s["layers"])
    w.add_feed_forward_length(s["ff"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_rope_freq_base(1000000.0)
    w.add_layer_norm_rms_eps(1e-6)
    half = hd // 2
    w.add_rope_dimension_sections([half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8, 0])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    rng = np.random.default_rng(0)
    vocab = int(reader.tensors[[t.name for t in reader.tensors].index("token_embd.weight")].shape[1])
    kv = s["kv_heads"] * hd

    def rnd(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float16)

    w.add_tensor("token_embd.weight", rnd(vocab, d, scale=0.5))
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))
    w.add_tensor("output.weight", rnd(vocab, d, scale=0.1))
    for i in range(s["layers"]):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(d, np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(d, np.float32))
        for name, rows in (("attn_q", d), ("attn_k", kv), ("attn_v", kv)):
            w.add_tensor(p + name + ".weight", rnd(rows, d))
            w.add_tensor(p + name + ".bias", np.zeros(rows, np.float32))
        w.add_tensor(p + "attn_output.weight", rnd(d, d))
        w.add_tensor(p + "ffn_gate.weight", rnd(s["ff"], d))
        w.add_tensor(p + "ffn_up.weight", rnd(s["ff"], d))
        w.add_tensor(p + "ffn_down.weight", rnd(d, s["ff"]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f16 = Path(str(dst) + ".f16")
    llama_quantize(f16, dst, "q4_k_m")
    f16.unlink()
    return dst


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _rates(t0, t1, t2, n: int) -> tuple[float, float, float, float]:
    """(TTFT wall, TTFT cpu, decode tok/s wall, decode tok/s cpu) from clocks at start, first token, end."""
    return t1[0] - t0[0], t1[1] - t0[1], (n - 1) / (t2[0] - t1[0]), (n - 1) / max(t2[1] - t1[1], 1e-9)


def run_sdk(omni, n: int, use_async: bool) -> tuple[tuple[float, ...], list[int]]:
    import asyncio

    import pocketomni as po

    chat = omni.chat(max_tokens=n)
    marks: list[tuple[float, float]] = []

    def see(ev) -> None:
        if not marks and isinstance(ev, po.TextDelta):
            marks.append(_clock())

    t0 = _clock()
    if use_async:
        async def go() -> list:
            out = []
            async for ev in chat.send(PROMPT):
                see(ev)
                out.append(ev)
            return out
        events = asyncio.run(go())
    else:
        events = []
        for ev in chat.send_sync(PROMPT):
            see(ev)
            events.append(ev)
    t2 = _clock()
    done = events[-1]
    assert isinstance(done, po.Done)
    chat.close()
    return _rates(t0, marks[0], t2, len(done.tokens)), list(done.tokens)


def prompt_ids(omni) -> list[int]:
    """The token ids the SDK prefills for one PROMPT turn (what the raw baselines are given)."""
    probe = omni.chat(max_tokens=1)
    list(probe.send_sync(PROMPT))
    ids = probe.tokens[: len(probe.tokens)]  # the prompt (the one reply token is pending, not cached)
    probe.close()
    return ids


def run_raw(llm, ids: list[int], n: int) -> tuple[tuple[float, ...], list[int]]:
    llm.reset()
    marks: list[tuple[float, float]] = []
    count = 0
    t0 = _clock()
    for _chunk in llm.create_completion(ids, max_tokens=n, temperature=0.0, stream=True):
        if not marks:
            marks.append(_clock())
        count += 1
    t2 = _clock()
    return _rates(t0, marks[0], t2, count), list(llm.eval_tokens)[len(ids):]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("gguf", nargs="?", help="thinker GGUF (qwen2vl with the Qwen2.5-Omni tokenizer)")
    ap.add_argument("--synthetic", choices=sorted(SHAPES), help="build a random-weight model of this size")
    ap.add_argument("--from-thinker", help="GGUF whose tokenizer and chat template the synthetic model copies")
    ap.add_argument("--out", default="/tmp/pocketomni-bench", help="where the synthetic model is written")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.synthetic:
        if not args.from_thinker:
            ap.error("--synthetic needs --from-thinker")
        Path(args.out).mkdir(parents=True, exist_ok=True)
        path = build_synthetic(Path(args.from_thinker), Path(args.out) / f"synthetic-{args.synthetic}-q4_k_m.gguf",
                               args.synthetic)
    elif args.gguf:
        path = Path(args.gguf)
    else:
        ap.error("pass a GGUF or --synthetic")

    import llama_cpp

    import pocketomni as po

    omni = po.Omni.load_sync(path, n_ctx=2048, n_threads=args.threads)
    ids = prompt_ids(omni)

    def raw_model() -> llama_cpp.Llama:
        return llama_cpp.Llama(str(path), n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads,
                               n_batch=512, flash_attn=False, verbose=False)

    res: dict[str, list[tuple[float, ...]]] = {"raw": [], "sdk": [], "sdk-async": []}
    same = True
    for _ in range(args.repeats):
        # A fresh raw model per run, closed afterwards: a live llama.cpp context keeps worker threads
        # polling for a while after each decode, which would slow down whatever runs next.
        llm = raw_model()
        r, rt = run_raw(llm, ids, args.tokens)
        llm.close()
        s, st = run_sdk(omni, args.tokens, False)
        a, at = run_sdk(omni, args.tokens, True)
        res["raw"].append(r)
        res["sdk"].append(s)
        res["sdk-async"].append(a)
        same = same and st[: len(rt)] == rt and at == st
    print(f"model {path.name}, prompt {len(ids)} tokens, {args.tokens} reply tokens, {args.threads} threads, "
          f"median of {args.repeats}; greedy tokens identical: {same}")
    print("  (wall: elapsed time; cpu: this process's CPU time, which other jobs on the machine do not inflate)")
    base = [statistics.median(x) for x in zip(*res["raw"])]
    for name, rows in res.items():
        m = [statistics.median(x) for x in zip(*rows)]
        print(f"  {name:9s} TTFT wall {m[0] * 1000:8.1f} ms ({m[0] / base[0]:.2f}x)  cpu {m[1] * 1000:8.1f} ms "
              f"({m[1] / base[1]:.2f}x) | decode wall {m[2]:6.1f} tok/s ({m[2] / base[2]:.2f}x)  cpu "
              f"{m[3]:6.1f} tok/s ({m[3] / base[3]:.2f}x)")
    omni.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
