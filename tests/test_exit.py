"""A process that ends while a reply is being decoded on a daemon thread exits cleanly (rc 0), not with
a segfault: the interpreter's shutdown must not free the model under a running llama_decode.

Each case runs in its own interpreter. The script waits until the reply has started (a first event
arrived) and checks the worker is still decoding when the main thread falls off the end; the test
fails if that precondition did not hold, so a case cannot pass by finishing early.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PRELUDE = """
import asyncio, sys, threading, time
import pocketomni as po
folder = sys.argv[1]
started = threading.Event()
def report_alive(t):
    print("ALIVE" if t.is_alive() else "FINISHED-EARLY", flush=True)
"""

CASES = {
    # the reproduction: a sync turn iterated on a daemon thread
    "sync-daemon-thread": """
omni = po.Omni.load_sync(folder, n_threads=1)
chat = omni.chat()
def run():
    for ev in chat.send_sync("go", max_tokens=3800):
        started.set()
t = threading.Thread(target=run, daemon=True); t.start()
started.wait(60); time.sleep(0.2); report_alive(t)
""",
    # an asyncio loop on a daemon thread, the turn streamed with chat.send
    "async-loop-daemon-thread": """
loop = asyncio.new_event_loop()
t = threading.Thread(target=loop.run_forever, daemon=True); t.start()
async def load():
    return await po.Omni.load(folder, n_threads=1)
omni = asyncio.run_coroutine_threadsafe(load(), loop).result(120)
async def run():
    async for ev in omni.chat().send("go", max_tokens=3800):
        started.set()
fut = asyncio.run_coroutine_threadsafe(run(), loop)
started.wait(60); time.sleep(0.2); print("ALIVE" if not fut.done() else "FINISHED-EARLY", flush=True)
""",
    # a spoken reply (thinker + talker decoding, token2wav) on a daemon thread
    "speech-daemon-thread": """
omni = po.Omni.load_sync(folder, n_threads=1)
chat = omni.chat(speech=True, max_tokens=3800)
def run():
    for ev in chat.send_sync("go"):
        if isinstance(ev, po.AudioChunk):
            started.set()
t = threading.Thread(target=run, daemon=True); t.start()
started.wait(120); time.sleep(0.2); report_alive(t)
""",
    # the Kivy demo's engine (an asyncio loop on a daemon thread owning the model): quit mid-reply
    "kivy-app-engine": """
sys.path.insert(0, sys.argv[2])
from engine import Conversation, Engine
eng = Engine(lambda fn: fn(), input_device=False, output_device=False, max_tokens=3800)
ready = threading.Event()
eng.on_event = lambda ev: started.set() if type(ev).__name__ in ("ReplyText", "TextDelta", "ReplyStarted") else None
eng.load(folder, lambda caps: ready.set(), lambda e: print("LOAD-ERROR", e, flush=True))
ready.wait(120); ready.clear()
eng.start_conversation(Conversation(speech=False, hands_free=False), lambda note: ready.set(),
                       lambda e: print("START-ERROR", e, flush=True))
ready.wait(120)
eng.send_text("go")
started.wait(60); time.sleep(0.2)
turn_running = eng.chat is not None and eng.chat._flag is not None
print("ALIVE" if turn_running else "FINISHED-EARLY", flush=True)
""",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_process_ends_mid_reply_without_a_crash(converted_tiny, tmp_path, case) -> None:
    script = tmp_path / f"{case}.py"
    script.write_text(textwrap.dedent(PRELUDE) + textwrap.dedent(CASES[case]))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(script), str(converted_tiny("base", "f32")),
                           str(ROOT / "apps" / "kivy_demo")], capture_output=True, text=True, timeout=600, env=env, check=False)
    out = proc.stdout + proc.stderr
    assert "ALIVE" in proc.stdout, f"the reply was not running when the script ended:\n{out[-3000:]}"
    if proc.returncode < 0:
        pytest.fail(f"{case}: the process died of {signal.Signals(-proc.returncode).name} at exit:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
