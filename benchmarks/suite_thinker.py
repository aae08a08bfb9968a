"""Thinker section of the benchmark suite: SDK text turns vs a raw llama-cpp-python loop, and the decode
bandwidth roofline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from suite_common import clock, med  # first: sets the BLAS thread variables before numpy loads

# isort: split

import numpy as np


class RawLlama:
    """The baseline: llama-cpp-python's low-level API only, on the same GGUF."""

    def __init__(self, path: Path, threads: int, n_ctx: int, n_batch: int) -> None:
        import llama_cpp as L

        self.L, self.threads, self.n_ctx, self.n_batch = L, threads, n_ctx, n_batch
        L.llama_backend_init()
        self.model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.n_vocab = int(L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model)))

    def _context(self) -> Any:
        L = self.L
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = self.n_ctx, self.n_batch, min(512, self.n_batch)
        cp.n_threads = cp.n_threads_batch = self.threads
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED  # the SDK's default
        cp.no_perf = True
        return L.llama_init_from_model(self.model, cp)

    def generate(self, ids: list[int], n: int) -> tuple[tuple[float, float, float, float], list[int]]:
        """Greedy: (TTFT wall, TTFT cpu, decode tok/s wall, decode tok/s cpu) and the tokens.
        A fresh context per run (an idle one keeps its worker threads spinning for a while)."""
        L = self.L
        ctx = self._context()
        chunks = [(L.llama_token * len(c))(*c) for c in (ids[i:i + self.n_batch] for i in range(0, len(ids), self.n_batch))]
        one = (L.llama_token * 1)()

        def step(arr: Any, m: int) -> int:
            if L.llama_decode(ctx, L.llama_batch_get_one(arr, m)) != 0:
                raise RuntimeError("llama_decode failed")
            return int(np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(self.n_vocab,)).argmax())

        t0 = clock()
        for c in chunks:
            tok = step(c, len(c))
        t1 = clock()
        out = [tok]
        for _ in range(n - 1):
            one[0] = tok
            tok = step(one, 1)
            out.append(tok)
        t2 = clock()
        L.llama_free(ctx)
        return (t1[0] - t0[0], t1[1] - t0[1], (n - 1) / (t2[0] - t1[0]), (n - 1) / max(t2[1] - t1[1], 1e-9)), out

    def close(self) -> None:
        self.L.llama_model_free(self.model)


def decode_bytes(path: Path, n_ctx_mean: float) -> dict[str, float]:
    """Bytes a decode step reads: weights (token_embd only if it doubles as the output) + the f16 KV cache."""
    import gguf

    r = gguf.GGUFReader(path)
    names = {t.name: int(t.n_bytes) for t in r.tensors}
    weights = sum(v for k, v in names.items() if k != "token_embd.weight")
    if "output.weight" not in names:
        weights += names["token_embd.weight"]
    arch = str(r.fields["general.architecture"].contents())

    def meta(key: str) -> int:
        return int(r.fields[f"{arch}.{key}"].contents())

    head_dim = meta("embedding_length") // meta("attention.head_count")
    kv = meta("block_count") * 2 * meta("attention.head_count_kv") * head_dim * 2 * n_ctx_mean
    return {"weight_bytes": weights, "kv_bytes": kv, "bytes_per_token": weights + kv}


def sdk_generate(omni: Any, n: int) -> tuple[tuple[float, float, float, float], list[int]]:
    """One SDK text turn; (TTFT, nan, decode tok/s, nan) from the turn's own Timings: its first token is
    timed when sampled, like the raw loop's (the first TextDelta can come later: a token may be part of
    a character), decode = steps after the first token over their time. CPU time cannot be split here."""
    import sdk_vs_llama as svl

    import pocketomni as po

    chat = omni.chat(max_tokens=n)
    done = next(e for e in chat.send_sync(svl.PROMPT) if isinstance(e, po.Done))
    chat.close()
    t = done.timings
    return (t.time_to_first_token, float("nan"), t.decode_tokens_per_second, float("nan")), list(done.tokens)


def bench_thinker(omni: Any, raw: RawLlama, plan: dict, bw: float) -> dict[str, Any]:
    import sdk_vs_llama as svl

    n, reps = plan["thinker_tokens"], plan["repeats"]
    ids = svl.prompt_ids(omni)
    rows: dict[str, list] = {"sdk": [], "raw": []}
    same = True
    for i in range(reps + 1):  # the first round is the warm-up
        r, rt = raw.generate(ids, n)
        s, st = sdk_generate(omni, n)
        same = same and st == rt[: len(st)]
        if i:
            rows["raw"].append(r)
            rows["sdk"].append(s)
    m = {k: [med(list(x)) for x in zip(*v)] for k, v in rows.items()}
    out = {"prompt_tokens": len(ids), "reply_tokens": n, "repeats": reps, "greedy_tokens_identical": same,
           "runs": rows}
    for k in ("sdk", "raw"):
        ttft, ttft_cpu, dec, dec_cpu = m[k]
        out[k] = {"ttft_s": ttft, "ttft_cpu_s": ttft_cpu, "prefill_tok_s": len(ids) / ttft,
                  "prefill_cpu_tok_s": len(ids) / ttft_cpu, "decode_tok_s": dec, "decode_cpu_tok_s": dec_cpu}
    roof = decode_bytes(omni.folder.thinker, len(ids) + n / 2)
    roof["copy_gbs"] = bw
    roof["roofline_tok_s"] = bw * 1e9 / roof["bytes_per_token"]
    out["roofline"] = roof
    return out
