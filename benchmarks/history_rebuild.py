"""What a context trim costs (issue 15 §3): the re-prefill of the kept history after old turns are
dropped (chat/history_keeper.py), next to the same run's ordinary prefill rate.

A text chat at a small n_ctx gets turns of ~180 tokens (2-token replies) until a reply leaves less than
the policy's headroom free; the trim that follows is timed by its own HistoryTrimmed event (planning +
re-prefill, wall seconds) and by the process CPU time between the reply's last text and that event
(all threads: on a shared machine the CPU seconds are the steadier figure). The rebuild of a default chat (n_ctx 4096, keep 0.5: up to 2048 tokens)
is extrapolated from the measured rate.

    python benchmarks/history_rebuild.py /work/synth/3b-q4_k_m --name 3b-synthetic
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pocketomni as po

PARAGRAPH = ("The kitchen counter holds a cutting board, two onions, a jar of tomato sauce, a pot of water "
             "that is just starting to boil, a box of spaghetti, a wooden spoon, salt, a pepper mill and a "
             "phone propped against the tiles showing a recipe. ")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--name", default="model")
    ap.add_argument("--n-ctx", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    out = Path(__file__).parent / "results"
    t0 = time.perf_counter()
    with po.Omni.load_sync(args.folder, n_ctx=args.n_ctx, n_threads=args.threads) as omni:
        load_s = time.perf_counter() - t0
        chat = omni.chat(system="You are a helpful assistant.", max_tokens=2, temperature=0.0)
        turns, trim = [], None
        for i in range(40):
            events, cpu = [], []
            for ev in chat.send_sync(f"Turn {i}. {PARAGRAPH * 2}What should I do next?"):
                events.append(ev)
                cpu.append(time.process_time())
            done = events[-1]
            assert isinstance(done, po.Done)
            turns.append({"prompt_tokens": done.usage.prompt_tokens, "cpu_seconds": cpu[-1] - cpu[0],
                          "prefill_tok_s": done.timings.prefill_tokens_per_second, "n_tokens": chat.n_tokens})
            cut = [k for k, e in enumerate(events) if isinstance(e, po.HistoryTrimmed)]
            if cut:
                trim, trim_cpu = events[cut[0]], cpu[cut[0]] - cpu[cut[0] - 1]
                break
        assert trim is not None, "no trim happened"
        kept = [m for m in chat.messages if not m.dropped]
    rebuilt = trim.tokens_after
    rate = rebuilt / trim.seconds
    cpu_rate = rebuilt / trim_cpu
    prefill = sorted(t["prefill_tok_s"] for t in turns)[len(turns) // 2]
    result = {
        "model": args.name, "folder": str(args.folder), "n_ctx": args.n_ctx, "threads": args.threads,
        "cpu": next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("model name")), "?"),
        "load_avg_after": os.getloadavg()[0], "load_seconds": load_s, "turns": turns,
        "trim": {"tokens_before": trim.tokens_before, "tokens_after": rebuilt, "seconds": trim.seconds, "cpu_seconds": trim_cpu,
                 "dropped_messages": trim.dropped_messages, "kept_messages": len(kept)},
        "rebuild_tok_s": rate, "rebuild_tok_per_cpu_s": cpu_rate, "turn_prefill_tok_s_median": prefill,
        "default_chat_rebuild_seconds_2048": 2048 / rate, "default_chat_rebuild_cpu_seconds_2048": 2048 / cpu_rate,
    }
    out.mkdir(exist_ok=True)
    (out / f"history_rebuild-{args.name}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "turns"}, indent=1))


if __name__ == "__main__":
    main()
