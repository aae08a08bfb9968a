"""`pocketomni chat MODEL_DIR`: an interactive chat in the terminal, replies streamed as they are written.

Attachments given with --image / --audio go with the first message; inside the chat, `/image PATH`
and `/audio PATH` attach files to the next message. Other commands: /reset, /save PATH, /load PATH,
/help, /quit. Ctrl-C stops a reply (it is kept, marked interrupted); Ctrl-D or /quit ends the chat.
With --prompt the chat answers one message and exits (handy in scripts).
--speak plays each reply aloud as it is written (sounddevice, default output device); --wav PATH
writes the spoken reply to PATH (later replies of a session to PATH-2.wav, PATH-3.wav, ...).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

HELP = """commands:
  /image PATH   attach an image to the next message      /audio PATH   attach an audio clip
  /reset        forget the conversation                  /save PATH    save the chat to a file
  /load PATH    continue a saved chat                    /quit         leave (or Ctrl-D)
Ctrl-C stops the reply being written."""


def add_chat_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `chat` subcommand on an argparse subparsers object."""
    p = subparsers.add_parser(
        "chat", help="chat with a model in the terminal (text, images, audio in; streamed text out)",
        description="Chat with a Qwen2.5-Omni model folder offline. " + HELP.split("\n", 1)[0],
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a folder from `pocketomni convert` (or thinker + mmproj GGUFs)")
    p.add_argument("--image", action="append", default=[], metavar="PATH", help="image for the first message (repeatable)")
    p.add_argument("--audio", action="append", default=[], metavar="PATH", help="audio clip for the first message (repeatable)")
    p.add_argument("--system", default=None, help="system prompt (default: the model's own)")
    p.add_argument("--prompt", default=None, help="answer this one message and exit")
    p.add_argument("--max-tokens", type=int, default=1024, help="most tokens per reply (default 1024)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); higher = more random")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0 = off)")
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    p.add_argument("--n-ctx", type=int, default=4096, help="context window in tokens (default 4096)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    p.add_argument("--stats", action="store_true", help="print token counts and speed after each reply")
    p.add_argument("--speak", action="store_true", help="speak the replies through the default output device")
    p.add_argument("--wav", default=None, metavar="PATH", help="write the spoken reply to this WAV file")
    p.add_argument("--voice", default=None, help="voice of spoken replies: Chelsie (default) or Ethan")
    p.add_argument("--speech-preset", default=None, choices=["fast", "reference"],
                   help="vocoder preset of spoken replies (default fast)")
    p.add_argument("--max-codes", type=int, default=None, metavar="N",
                   help="most speech codes per spoken reply (50 per second of speech; default 4096)")
    p.set_defaults(func=run_chat)
    return p


def _wav_path(base: str, n: int) -> Path:
    """Reply n (1-based) of a session: PATH, then PATH-2.wav, PATH-3.wav, ..."""
    p = Path(base)
    return p if n == 1 else p.with_name(f"{p.stem}-{n}{p.suffix or '.wav'}")


class _ProgressBar:
    """A stderr progress bar for long media encodes and prefills (tqdm; quiet for short prompts)."""

    MIN_ROWS = 512  # prompts shorter than this prefill in well under a second on a laptop

    def __init__(self) -> None:
        self._bar: Any = None
        self._stage = ""

    def update(self, p: Any) -> None:
        if p.stage == "prefill" and p.total < self.MIN_ROWS and self._bar is None:
            return
        if self._bar is None or p.stage != self._stage:
            self.close()
            from tqdm import tqdm

            unit = "item" if p.stage == "encode" else "row"
            self._bar = tqdm(total=p.total, desc=p.stage, unit=unit, file=sys.stderr, leave=False)
            self._stage = p.stage
        self._bar.update(p.done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _reply(chat: Any, text: str, images: list[str], audio: list[str], out: TextIO, stats: bool,
           state: dict[str, Any] | None = None) -> None:
    import pocketomni as po

    state = state if state is not None else {}
    player, wav = state.get("player"), state.get("wav")
    chunks: list[Any] = []
    bar = _ProgressBar()
    events = chat.send_sync(text or None, images=images or None, audio=audio or None, on_progress=bar.update)
    try:
        for ev in events:
            bar.close()
            if isinstance(ev, po.TextDelta):
                out.write(ev.text)
                out.flush()
            elif isinstance(ev, po.AudioChunk):
                chunks.append(ev)
                if player is not None:
                    player.write(ev.samples)
            elif isinstance(ev, po.Done):
                out.write("\n")
                if stats:
                    u, t = ev.usage, ev.timings
                    speech = (f"; speech {t.audio_seconds:.1f} s ({u.audio_codes} codes), first audio "
                              f"{t.time_to_first_audio:.2f} s, real-time factor {t.real_time_factor:.2f}"
                              if u.audio_codes else "")
                    print(f"[{ev.finish_reason}; prompt {u.prompt_tokens} (media {u.media_tokens}), reply "
                          f"{u.reply_tokens} tokens; first token {t.time_to_first_token:.2f} s, prefill "
                          f"{t.prefill_tokens_per_second:.0f} tok/s, decode {t.decode_tokens_per_second:.1f} tok/s"
                          f"{speech}]", file=sys.stderr)
        if player is not None:
            player.finish()
            player.wait()
    except KeyboardInterrupt:
        events.close()  # the partial reply stays in the history, marked interrupted
        if player is not None:
            player.stop()
            player.resume()
        out.write(" [interrupted]\n")
    if wav is not None and chunks:
        state["replies"] = state.get("replies", 0) + 1
        path = po.save_wav(_wav_path(wav, state["replies"]), chunks)
        print(f"[spoken reply written to {path}]", file=sys.stderr)


def _command(line: str, state: dict[str, Any], out: TextIO) -> bool:
    """Handle a /command; returns False to quit."""
    import pocketomni as po

    cmd, _, arg = line.partition(" ")
    arg = arg.strip()
    if cmd in ("/quit", "/exit"):
        return False
    if cmd == "/help":
        print(HELP, file=out)
    elif cmd in ("/image", "/audio") and arg:
        state["images" if cmd == "/image" else "audio"].append(arg)
        print(f"[attached {arg}]", file=out)
    elif cmd == "/reset":
        state["chat"].reset()
        print("[conversation cleared]", file=out)
    elif cmd == "/save" and arg:
        state["chat"].save(arg)
        print(f"[saved to {arg}]", file=out)
    elif cmd == "/load" and arg:
        chat = state["omni"].restore_chat(arg)
        state["chat"].close()
        state["chat"] = chat
        print(f"[continuing {arg}: {len(chat.messages)} messages]", file=out)
    else:
        raise po.OptionsError(f"unknown command {line!r}; type /help")
    return True


def run_chat(args: argparse.Namespace) -> int:
    """Run `pocketomni chat` for parsed arguments (the player, model and chat are closed at the end)."""
    import pocketomni as po

    out = sys.stdout
    speak = bool(args.speak or args.wav)
    if not speak and (args.voice or args.speech_preset or args.max_codes):
        raise po.OptionsError("--voice, --speech-preset and --max-codes need --speak or --wav")
    player = None
    if args.speak:
        from pocketomni.audio.io import Player

        player = Player()  # FeatureUnavailableError (reported) when there is no output device
    omni = po.Omni.load_sync(args.model_dir, n_ctx=args.n_ctx, n_threads=args.threads)
    with omni:
        speech: dict[str, Any] = {}
        if speak:
            sopts = {"max_codes": args.max_codes} if args.max_codes else {}
            sopts["seed"] = args.seed
            speech = {"speech": True, "voice": args.voice, "speech_preset": args.speech_preset,
                      "speech_options": sopts}
        chat = omni.chat(system=args.system, max_tokens=args.max_tokens, temperature=args.temperature,
                         top_k=args.top_k, top_p=args.top_p, seed=args.seed, **speech)
        state: dict[str, Any] = {"omni": omni, "chat": chat, "images": list(args.image), "audio": list(args.audio),
                                 "player": player, "wav": args.wav}
        try:
            return _loop(args, state, out)
        finally:
            if player is not None:
                player.close()


def _loop(args: argparse.Namespace, state: dict[str, Any], out: TextIO) -> int:
    """The chat loop; a PocketOmniError of one message is reported and the chat goes on."""
    import pocketomni as po

    omni = state["omni"]
    if args.prompt is not None:
        _reply(state["chat"], args.prompt, state["images"], state["audio"], out, args.stats, state)
        return 0
    interactive = sys.stdin.isatty()
    if hasattr(sys.stdin, "reconfigure"):  # bytes that are not UTF-8 become U+FFFD, not a crash
        sys.stdin.reconfigure(errors="replace")
    if interactive:
        caps = omni.capabilities
        print(f"pocketomni chat: {omni.folder.root} (images {'yes' if caps.vision else 'no'}, audio "
              f"{'yes' if caps.audio_in else 'no'}). /help for commands, Ctrl-D to quit.", file=out)
    while True:
        try:
            line = input("> " if interactive else "")
        except (EOFError, KeyboardInterrupt):
            print(file=out)
            return 0
        line = line.strip()
        if not line and not (state["images"] or state["audio"]):
            continue
        try:
            if line.startswith("/"):
                if not _command(line, state, out):
                    return 0
                continue
            images, audio = state["images"], state["audio"]
            state["images"], state["audio"] = [], []
            _reply(state["chat"], line, images, audio, out, args.stats, state)
        except po.PocketOmniError as e:
            print(f"error: {e}", file=sys.stderr)
