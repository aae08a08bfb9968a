"""`pocketomni serve MODEL_DIR --port P` as a user runs it: a child process that answers the openai
client on 127.0.0.1 and stops cleanly on Ctrl-C (SIGINT)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import openai


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_answers_and_stops(converted_tiny) -> None:
    folder = converted_tiny("base", "f32")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pocketomni", "serve", str(folder), "--port", str(port),
                             "--model-name", "tiny", "--threads", "1", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=30)
        deadline = time.monotonic() + 120
        while True:
            try:
                models = c.models.list().data
                break
            except openai.APIConnectionError:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
        assert [m.id for m in models] == ["tiny"]
        out = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
        assert out.usage.completion_tokens == 3 and out.choices[0].message.content
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"serving 'tiny' at http://127.0.0.1:{port}/v1" in err


def test_serve_refuses_a_bad_local_files_folder(converted_tiny, tmp_path) -> None:
    res = subprocess.run([sys.executable, "-m", "pocketomni", "serve", str(converted_tiny("base", "f32")),
                          "--allow-local-files", str(tmp_path / "missing")], capture_output=True, text=True, timeout=120,
                         check=False)
    assert res.returncode == 2 and "is not a folder" in res.stderr
