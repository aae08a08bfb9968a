"""Relabelling stored KV positions (LlamaContext.clamp_positions) and the ordered decode built on it.

A video with its sound track has positions that go back in time (per 2 s chunk: frames at t = s, s + 25,
then audio at t = s .. s + 49) and shared bos/eos positions. The reference attends by sequence order;
llama.cpp masks by stored position and refuses a batch starting below the cached maximum. These tests
decode such a prompt (random embedding rows, the real layout from pocketomni.engine.positions) and compare
with the transformers thinker fed the same embeddings and position ids:

- with `decode_in_order` (runs + clamp) the logits and every row's hidden state match;
- WITHOUT the clamp the same prompt does not: one plain batch gives different logits (llama.cpp's
  position mask is not the causal mask), and run-wise decoding without relabelling is rejected;
- the clamp changes only positions (the K/V bytes stay), keeps our true positions (next_pos), never
  touches earlier turns, and a turn can still be removed by position range afterwards.
"""

from __future__ import annotations

import llama_cpp  # noqa: F401  (hard dependency: fail loudly if missing)
import numpy as np
import pytest
import torch
import transformers  # noqa: F401  (hard dependency: fail loudly if missing)
from test_parity_media_stock import RTOL, reference, relative_gap

from pocketomni.backend import LlamaContext, LlamaModel
from pocketomni.backend.kv_state import cell_positions, clamp_cell_positions, set_cell_t
from pocketomni.engine.ordered_decode import causal_runs, decode_in_order
from pocketomni.engine.positions import (
    KIND_TEXT,
    TextSegment,
    VideoSegment,
    build_prompt,
    position_order_is_causal,
)

torch.set_num_threads(1)

TURN1 = [151644, 872, 198, 9707, 11, 1879, 151645, 198]  # a short first turn (plain ids)


def _layout(start_pos: int = 0, grid=(6, 4, 4), audio_tokens: int = 150):
    """Text, a 6 s video with 150 audio tokens (3 chunks), text; as build_prompt lays it out."""
    return build_prompt([TextSegment([151644, 872, 198]), VideoSegment(grid, 1.0, audio_tokens),
                         TextSegment([3838, 374, 419, 30, 151645, 198, 151644, 77091, 198])], start_pos=start_pos)


def _rows(model: LlamaModel, layout, seed: int = 0) -> np.ndarray:
    """Token embeddings at text slots, random rows of the same scale at media slots."""
    rows = model.embed_tokens(layout.input_ids).astype(np.float32)
    media = layout.kinds != KIND_TEXT
    scale = float(rows[~media].std())
    rows[media] = np.random.default_rng(seed).standard_normal((int(media.sum()), rows.shape[1])) * scale
    return rows


def _reference(variant: str, rows: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(last logits, final hidden states of every row) of the transformers thinker."""
    model, _ = reference(variant)
    with torch.no_grad():
        out = model.thinker(inputs_embeds=torch.from_numpy(rows)[None],
                            position_ids=torch.from_numpy(np.asarray(positions, np.int64))[:, None, :],
                            output_hidden_states=True)
    return out.logits[0, -1].numpy().copy(), out.hidden_states[-1][0].numpy().copy()


@pytest.fixture(scope="module")
def tiny(converted_tiny):
    folder = converted_tiny("base")
    with LlamaModel(folder / "thinker-f32.gguf", n_threads=1) as model:
        yield model


def _ctx(model: LlamaModel) -> LlamaContext:
    return LlamaContext(model, n_ctx=1024, n_batch=1024, n_threads=1, kv_f32=True, flash_attn=False)


def test_layout_is_not_position_causal():
    lay = _layout()
    assert not position_order_is_causal(lay.positions)
    runs = causal_runs(lay.positions)
    # prefix..vision_bos | audio_bos + chunk-0 video | audio0 + video1 | audio1 + video2 | audio2 + audio_eos | vision_eos..
    assert len(runs) == 6
    assert all(position_order_is_causal(lay.positions[:, a:b]) for a, b in runs)


def test_ordered_decode_matches_reference(tiny):
    lay = _layout()
    rows = _rows(tiny, lay)
    ref_logits, ref_hidden = _reference("base", rows, lay.positions)
    relabels = []
    with _ctx(tiny) as ctx:
        res = decode_in_order(ctx, rows, lay.positions, hidden=True, on_run=lambda a, b, n: relabels.append(n))
        assert ctx.next_pos(0) == lay.decode_start  # our log keeps the true positions
        assert ctx.n_tokens(0) == lay.input_ids.size
    assert sum(1 for n in relabels if n) == 3  # one relabel before each chunk's audio
    gap = relative_gap(res.last_logits, ref_logits)
    hgap = relative_gap(res.hidden, ref_hidden)
    print(f"ordered decode: logits gap {gap:.3g}, hidden gap {hgap:.3g}")
    assert gap <= RTOL and hgap <= RTOL


def test_position_order_decode_differs_from_reference(tiny):
    """Without the relabelling, llama.cpp takes the prompt only with non-decreasing positions (it refuses
    a batch going back in time, and a later batch starting below the cached max). Decoding the rows in
    position order is then what its mask computes for this prompt: attention by position, not by
    sequence order (chunk 0's audio at t = s .. s + 24 does not see the frame at t = s + 25). That
    differs from the reference; the ordered decode above does not."""
    lay = _layout()
    rows = _rows(tiny, lay)
    ref_logits, ref_hidden = _reference("base", rows, lay.positions)
    t, h, w = lay.positions
    order = np.lexsort((w, h, t))
    assert not np.array_equal(order, np.arange(order.size))
    with _ctx(tiny) as ctx:
        res = ctx.decode(embeddings=rows[order], positions=lay.llama_rows()[:, order], hidden="all")
    hidden = np.empty_like(res.hidden)
    hidden[order] = res.hidden
    assert order[-1] == order.size - 1  # the last prompt row is also last in position order
    gap, hgap = relative_gap(res.last_logits, ref_logits), relative_gap(hidden, ref_hidden)
    print(f"position-order decode (no relabel): logits gap {gap:.3g}, hidden gap {hgap:.3g}")
    assert gap > RTOL and hgap > RTOL


def test_runs_without_relabel_are_rejected(tiny):
    lay = _layout()
    rows = _rows(tiny, lay)
    pos = lay.llama_rows()
    runs = causal_runs(lay.positions)
    with _ctx(tiny) as ctx:
        for a, b in runs[:2]:
            ctx.decode(embeddings=rows[a:b], positions=pos[:, a:b], logits=None)
        a, b = runs[2]  # chunk 0's audio starts below the frame at t + 25
        with pytest.raises(ValueError, match="must not start before"):
            ctx.decode(embeddings=rows[a:b], positions=pos[:, a:b], logits=None)


def test_clamp_changes_positions_only(tiny):
    lay = _layout()
    rows = _rows(tiny, lay)
    pos = lay.llama_rows()
    with _ctx(tiny) as ctx:
        _, b = causal_runs(lay.positions)[1]
        ctx.decode(embeddings=rows[:b], positions=pos[:, :b], logits=None)
        before = ctx.stored_positions(0)
        raw = bytes(ctx._raw_state(0))
        next_before = ctx.next_pos(0)
        t_clamp = int(lay.positions[0, b]) - 1
        n = ctx.clamp_positions(0, t_clamp)
        after = ctx.stored_positions(0)
        raw_after = bytes(ctx._raw_state(0))
        assert ctx.next_pos(0) == next_before and ctx.n_tokens(0) == b
        assert ctx.seq_pos_range(0)[1] == t_clamp
    hit = before[:, 0] > t_clamp
    assert n == int(hit.sum()) > 0
    assert sorted(map(tuple, before[:, 1:].tolist())) == sorted(map(tuple, after[:, 1:].tolist()))  # (h, w) kept
    assert np.sort(np.minimum(before[:, 0], t_clamp)).tolist() == np.sort(after[:, 0]).tolist()
    # the K/V tensors after the cell table are byte-identical
    stride = 24
    table = 16 + stride * before.shape[0]
    assert raw[table:] == raw_after[table:]
    # the pure function agrees with what llama.cpp now reports, and undoes exactly
    buf = bytearray(raw)
    orig = clamp_cell_positions(buf, t_clamp, True)
    assert int((orig > t_clamp).sum()) == n
    assert np.array_equal(np.sort(cell_positions(buf, True)[:, 0]), np.sort(after[:, 0]))
    set_cell_t(buf, orig, True)
    assert bytes(buf) == raw


def test_second_turn_relabel_keeps_first_turn_and_rollback(tiny):
    with _ctx(tiny) as ctx:
        ctx.decode(tokens=TURN1, logits=None)
        first = ctx.stored_positions(0)
        start = ctx.next_pos(0)
        lay = _layout(start_pos=start)
        rows = _rows(tiny, lay, seed=3)
        decode_in_order(ctx, rows, lay.positions)
        stored = ctx.stored_positions(0)
        assert ctx.next_pos(0) == lay.decode_start
        assert (stored[:, 0] < start).sum() == len(TURN1)  # earlier turn untouched
        assert sorted(stored[stored[:, 0] < start, 0].tolist()) == sorted(first[:, 0].tolist())
        ctx.remove(0, start)  # drop the video turn by position range
        assert ctx.n_tokens(0) == len(TURN1) and ctx.seq_pos_range(0) == (0, len(TURN1) - 1)
        assert ctx.stored_positions(0).shape[0] == len(TURN1)
        assert ctx.next_pos(0) == start


def test_state_round_trip_after_relabel(tiny):
    lay = _layout()
    rows = _rows(tiny, lay)
    with _ctx(tiny) as ctx:
        decode_in_order(ctx, rows, lay.positions)
        blob = ctx.get_state(0)
        nxt = ctx.decode(tokens=[9707], logits="last").last_logits
        ctx.set_state(blob, 0)
        again = ctx.decode(tokens=[9707], logits="last").last_logits
    np.testing.assert_array_equal(nxt, again)
