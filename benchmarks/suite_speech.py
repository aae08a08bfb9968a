"""Speech sections of the benchmark suite: talker and token2wav vs their baselines and FLOP roofline, the
spoken turn, and the peak RSS of a spoken turn in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from suite_common import HERE, PLANS

_FALLBACK_RSS = """
import json, sys, pocketomni as po
folder, threads, tokens, codes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with po.Omni.load_sync(folder, n_threads=threads) as omni:
    chat = omni.chat(speech=True, speech_preset="fast", max_tokens=tokens,
                     speech_options=po.SpeechOptions(max_codes=codes, seed=3))
    for ev in chat.send_sync("Tell me a long story about a lighthouse keeper."):
        pass
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(json.dumps({"overall_peak_mb": int(hwm.split()[1]) / 1024}))
"""


def bench_memory(folder: Path, plan: dict, threads: int) -> dict[str, Any]:
    """Peak RSS of a spoken turn in a fresh process: memory.run, else VmHWM at the end of a turn."""
    args = [str(folder), str(threads), str(plan["mem_tokens"]), str(plan["mem_codes"])]
    code = ("import sys, json; from pathlib import Path; sys.path.insert(0, sys.argv[5]); import memory; "
            "r = memory.run(Path(sys.argv[1]), 'suite', int(sys.argv[2]), None, int(sys.argv[3]), int(sys.argv[4])); "
            "print(json.dumps({k: r[k] for k in ('overall_peak_mb', 'stages', 'n_ctx', 'audio_seconds')}))")
    errors = []
    for how, cmd in (("benchmarks/memory.py run()", [sys.executable, "-c", code, *args, str(HERE)]),
                     ("VmHWM after a spoken turn", [sys.executable, "-c", _FALLBACK_RSS, *args])):
        if how.startswith("benchmarks") and not (HERE / "memory.py").is_file():
            continue
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode == 0:
            return {"method": how, **json.loads(res.stdout.strip().splitlines()[-1]),
                    "tokens": plan["mem_tokens"], "codes": plan["mem_codes"], "errors": errors}
        errors.append(f"{how}: {res.stderr.strip().splitlines()[-1:]}")
    raise RuntimeError("; ".join(errors))


def flop_count(model: Any, engine: Any, n_codes: int, preset: str, results: Path) -> float:
    """FLOPs of the reference token2wav for n_codes (torch FlopCounterMode), cached per model size
    (FLOPs depend on shapes only: the 3B and 7B token2wav are the same network)."""
    import speech as sb
    from torch.utils.flop_counter import FlopCounterMode

    cache_file = results / "suite-flops.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    key = f"{sum(p.numel() for p in model.parameters())}:{preset}:{n_codes}"
    if key not in cache:
        codes, noise = sb.token2wav_inputs(n_codes)
        with FlopCounterMode(display=False) as fc:
            sb.torch_render(model, codes, engine._speakers["Chelsie"], noise, preset)
        cache[key] = float(fc.get_total_flops())
        cache_file.write_text(json.dumps(cache, indent=1))
    return cache[key]


def bench_speech(omni: Any, plan: dict, threads: int, gflops: float, results: Path) -> dict[str, Any]:
    """Talker, token2wav per preset (FLOP counts cached in `results`) and a spoken turn."""
    import speech as sb

    from pocketomni.engine.weights import load_token2wav

    out: dict[str, Any] = {}
    sb.WARMUP = True
    out["talker"] = sb.bench_talker(omni, threads, plan["talker_codes"], 64, plan["repeats"])
    print(f"  talker: SDK {out['talker']['sdk_codes_per_s']:.1f} codes/s, raw {out['talker']['raw_codes_per_s']:.1f}",
          flush=True)
    engine = omni.runtime.speech_engine()
    model = sb.torch_token2wav(load_token2wav(omni.folder.token2wav))
    n = plan["t2w_codes"]
    audio_s = n * 480 / sb.SR
    for preset, reps in plan["t2w_repeats"].items():
        sb.WARMUP = preset == "fast" or plan is PLANS["quick"]  # the reference preset is ~18x the work
        t = sb.bench_token2wav(omni, threads, n, reps, [preset], streamed_too=False, model=model)[preset]
        flops = flop_count(model, engine, n, preset, results)
        t.update(codes=n, audio_seconds=audio_s, repeats=reps, warmup=sb.WARMUP, flops=flops,
                 flops_per_audio_s=flops / audio_s, roofline_rtf=flops / audio_s / (gflops * 1e9))
        t["numpy_over_roofline"] = t["numpy_rtf"] / t["roofline_rtf"]
        out[f"token2wav_{preset}"] = t
    del model
    sb.WARMUP = False  # the sections above have warmed every stage of the spoken turn
    chat = sb.bench_chat(omni, plan["chat_tokens"], plan["chat_codes"], plan["chat_repeats"], ["fast"])["fast"]
    chat.update(repeats=plan["chat_repeats"], warmup=False)
    out["spoken_turn"] = chat
    sb.WARMUP = True
    return out
