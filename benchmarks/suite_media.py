"""Image and audio sections of the benchmark suite: SDK image encode vs raw mtmd, our audio encoder vs stock
mtmd (each in its own process)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from suite_common import IMAGES, med  # first: sets the BLAS thread variables before numpy loads

# isort: split

import numpy as np
from suite_thinker import RawLlama


class RawMtmd:
    """Stock mtmd through llama-cpp-python's mtmd_cpp bindings only."""

    def __init__(self, mmproj: Path, raw: RawLlama, threads: int, min_tokens: int, max_tokens: int) -> None:
        from llama_cpp import mtmd_cpp as M

        self.M, self.raw = M, raw
        p = M.mtmd_context_params_default()
        p.use_gpu, p.print_timings, p.warmup, p.n_threads = False, False, False, threads
        p.image_min_tokens, p.image_max_tokens = min_tokens, max_tokens
        self.ctx = M.mtmd_init_from_file(str(mmproj).encode(), raw.model, p)
        if not self.ctx:
            raise RuntimeError(f"mtmd could not load {mmproj}")
        self.n_embd = int(raw.L.llama_model_n_embd(raw.model))

    def encode_file(self, path: Path) -> int:
        """Decode the file, tokenize it with mtmd's own preprocessing, encode; returns the token rows."""
        import ctypes

        from PIL import Image

        M = self.M
        rgb = np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB")))
        bm = M.mtmd_bitmap_init(rgb.shape[1], rgb.shape[0], rgb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)))
        chunks = M.mtmd_input_chunks_init()
        text = M.mtmd_input_text()
        text.text = M.mtmd_default_marker()
        text.text_len, text.add_special, text.parse_special = len(text.text), False, True
        try:
            if M.mtmd_tokenize(self.ctx, chunks, ctypes.byref(text), (M.mtmd_bitmap_p_ctypes * 1)(bm), 1) != 0:
                raise RuntimeError("mtmd_tokenize failed")
            rows = 0
            for i in range(int(M.mtmd_input_chunks_size(chunks))):
                c = M.mtmd_input_chunks_get(chunks, i)
                if int(M.mtmd_input_chunk_get_type(c)) == M.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    continue
                k = int(M.mtmd_input_chunk_get_n_tokens(c))
                if M.mtmd_encode_chunk(self.ctx, c) != 0:
                    raise RuntimeError("mtmd_encode_chunk failed")
                np.ctypeslib.as_array(M.mtmd_get_output_embd(self.ctx), shape=(k * self.n_embd,)).copy()
                rows += k
            return rows
        finally:
            M.mtmd_input_chunks_free(chunks)
            M.mtmd_bitmap_free(bm)

    def close(self) -> None:
        self.M.mtmd_free(self.ctx)


def write_images(work: Path) -> dict[str, Path]:
    from PIL import Image

    out = {}
    for name, (w, h) in IMAGES.items():
        y, x = np.mgrid[0:h, 0:w]
        rng = np.random.default_rng(w)
        rgb = np.stack([(x * 255 // w), (y * 255 // h), ((x + y) % 256)], -1) + rng.integers(0, 40, (h, w, 3))
        out[name] = work / f"{name}.png"
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(out[name])
    return out


def bench_images(omni: Any, raw: RawLlama, plan: dict, threads: int, work: Path) -> dict[str, Any]:
    from pocketomni.chat.conversation import media_part

    media = omni.runtime.media
    kw = media._mtmd_kw
    stock = RawMtmd(omni.folder.mmproj, raw, threads, kw["image_min_tokens"], kw["image_max_tokens"])
    files = write_images(work)
    got: dict[str, int] = {}

    def sdk(path: Path) -> float:
        t = time.perf_counter()
        item = media.prepare(media_part("image", str(path)))
        got["sdk"] = media.encode(item).shape[0]
        return time.perf_counter() - t

    def raw_enc(path: Path) -> float:
        t = time.perf_counter()
        got["raw"] = stock.encode_file(path)
        return time.perf_counter() - t

    first = files["448x448"]
    sdk(first), raw_enc(first)  # warm-up: loads the projector, allocates mtmd's compute buffers
    out: dict[str, Any] = {}
    for name, path in files.items():
        runs: dict[str, list[float]] = {"sdk": [], "raw": []}
        for _ in range(plan["image_repeats"][name]):
            runs["sdk"].append(sdk(path))
            runs["raw"].append(raw_enc(path))
        out[name] = {"sdk_ms": 1000 * med(runs["sdk"]), "raw_ms": 1000 * med(runs["raw"]), "sdk_tokens": got["sdk"],
                     "raw_tokens": got["raw"], "repeats": len(runs["sdk"]), "runs": runs}
        print(f"  image {name}: SDK {out[name]['sdk_ms']:.0f} ms ({got['sdk']} tokens), raw mtmd "
              f"{out[name]['raw_ms']:.0f} ms ({got['raw']} tokens)", flush=True)
    stock.close()
    return out


def bench_audio(folder: Any, plan: dict, threads: int) -> dict[str, Any]:
    import audio_input

    secs = plan["audio_seconds"]
    res = {p: audio_input.measure(p, folder.thinker, folder.mmproj, secs, plan["audio_runs"], threads)
           for p in ("ours", "stock")}
    out: dict[str, Any] = {"runs": plan["audio_runs"], "raw": res}
    for s in secs:
        o, k = res["ours"]["clips"][str(s)], res["stock"]["clips"][str(s)]
        out[f"{s:g}s"] = {"ours_ms": 1000 * o["wall_s"], "stock_ms": 1000 * k["wall_s"], "ours_cpu_s": o["cpu_s"],
                          "stock_cpu_s": k["cpu_s"], "ours_tokens": o["tokens"], "stock_tokens": k["tokens"]}
    return out
