"""LlamaContext: token vs embedding decode, M-RoPE positions against transformers, KV ops, state."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from test_backend_tinymodel import TinySpec, build_tiny_gguf, quantize_gguf, tiny_weights

from pocketomni.backend.context import DecodeInterrupted, LlamaContext
from pocketomni.backend.llama import LlamaModel
from pocketomni.errors import ContextOverflowError, ModelFileError

SPEC = TinySpec()


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("ctx") / "tiny.gguf", SPEC)


@pytest.fixture(scope="module")
def model(tiny_path: Path):
    with LlamaModel(tiny_path, n_threads=1) as m:
        yield m


def _ctx(model: LlamaModel, **kw) -> LlamaContext:
    kw = {"n_ctx": 256, "n_batch": 64, "n_seq_max": 4, **kw}
    return LlamaContext(model, **kw)


def _prompt(n: int, seed: int = 1) -> list[int]:
    return np.random.default_rng(seed).integers(0, SPEC.n_vocab, n).tolist()


def test_token_and_embedding_decode_agree(model: LlamaModel) -> None:
    ids = _prompt(40)
    with _ctx(model) as c:
        a = c.decode_tokens(ids, logits="all", hidden="all")
        assert a.logits.shape == (40, SPEC.n_vocab) and a.hidden.shape == (40, SPEC.n_embd)
        assert (c.next_pos(), c.n_tokens(), c.seq_pos_range()) == (40, 40, (0, 39))
        c.clear()
        b = c.decode_embeddings(model.embed_tokens(ids), logits="all", hidden="all")
    np.testing.assert_allclose(b.logits, a.logits, rtol=0, atol=1e-6)
    np.testing.assert_allclose(b.hidden, a.hidden, rtol=0, atol=1e-6)


@pytest.mark.parametrize("embd_type", [12, 14, 6])  # GGML_TYPE_Q4_K, Q6_K, Q5_0 token tables
def test_quantized_embedding_rows_match_llama(tmp_path: Path, embd_type: int) -> None:
    spec = TinySpec(n_embd=256, n_head=4, n_head_kv=2, n_ff=256, n_layer=1)
    src = build_tiny_gguf(tmp_path / "f32.gguf", spec)
    q = quantize_gguf(src, tmp_path / "q.gguf", ftype=7, embd_type=embd_type)  # Q8_0 elsewhere
    ids = _prompt(24, seed=3)
    with LlamaModel(q, n_threads=1) as m, LlamaContext(m, n_ctx=64, n_batch=32) as c:
        assert int(m.gguf.tensor("token_embd.weight").ggml_type) == embd_type
        a = c.decode_tokens(ids, logits="all", hidden="all")
        c.clear()
        e = m.embed_tokens(ids)
        b = c.decode_embeddings(e, logits="all", hidden="all")
        # the dequantized rows are close to the float weights, and llama reads exactly them
        assert np.abs(e - tiny_weights(spec)["token_embd.weight"][ids]).max() < 0.1
    np.testing.assert_allclose(b.hidden, a.hidden, rtol=0, atol=1e-5)
    np.testing.assert_allclose(b.logits, a.logits, rtol=0, atol=1e-5)


def test_mrope_text_positions_equal_token_decode(model: LlamaModel) -> None:
    ids = _prompt(20, seed=2)
    e = model.embed_tokens(ids)
    t = np.arange(7, 27)
    with _ctx(model) as c:
        ref = c.decode_tokens(ids, positions=t, logits="all").logits
        for pos in (t, np.stack([t, t, t, np.zeros_like(t)])):
            c.clear()
            got = c.decode_embeddings(e, positions=pos, logits="all").logits
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
        assert c.next_pos() == 27


def test_decode_row_equals_a_one_row_decode(model: LlamaModel) -> None:
    """decode_row (the talker's per-code path) gives decode's logits and bookkeeping, row after row,
    and rejects what decode rejects."""
    ids = _prompt(12, seed=3)
    e = model.embed_tokens(ids)
    with _ctx(model) as a, _ctx(model) as b:
        a.decode_embeddings(e[:4], positions=np.tile(np.arange(4), (4, 1)) * [[1], [1], [1], [0]])
        b.decode_embeddings(e[:4], positions=np.tile(np.arange(4), (4, 1)) * [[1], [1], [1], [0]])
        for i in range(4, 12):
            ref = a.decode_embeddings(e[i : i + 1], positions=[[i], [i], [i], [0]], logits="last").last_logits
            got = b.decode_row(e[i], (i, i, i, 0))
            np.testing.assert_array_equal(got, ref)
        assert a.next_pos() == b.next_pos() == 12 and a.n_tokens() == b.n_tokens() == 12
        with pytest.raises(ValueError, match="must not start before"):
            b.decode_row(e[0], (3, 3, 3, 0))
        with pytest.raises(ValueError, match="finite"):
            b.decode_row(np.full(model.n_embd_inp, np.nan, np.float32), (12, 12, 12, 0))
        with pytest.raises(ValueError, match="position"):
            b.decode_row(e[0], (12, 12, 12))


def _hf_reference(spec: TinySpec):
    """transformers' Qwen2.5-Omni thinker text model carrying the tiny GGUF's weights."""
    import torch
    from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniTextConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniThinkerTextModel

    torch.set_num_threads(1)
    cfg = Qwen2_5OmniTextConfig(
        vocab_size=spec.n_vocab, hidden_size=spec.n_embd, intermediate_size=spec.n_ff,
        num_hidden_layers=spec.n_layer, num_attention_heads=spec.n_head, num_key_value_heads=spec.n_head_kv,
        rms_norm_eps=spec.rms_eps, max_position_embeddings=spec.n_ctx_train,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta, "mrope_section": spec.mrope_section},
    )
    cfg._attn_implementation = "eager"
    hf = Qwen2_5OmniThinkerTextModel(cfg).eval()
    w = tiny_weights(spec)
    names = {"embed_tokens.weight": "token_embd.weight", "norm.weight": "output_norm.weight"}
    for i in range(spec.n_layer):
        for hf_n, g_n in (("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"),
                          ("self_attn.v_proj", "attn_v")):
            names[f"layers.{i}.{hf_n}.weight"] = f"blk.{i}.{g_n}.weight"
            names[f"layers.{i}.{hf_n}.bias"] = f"blk.{i}.{g_n}.bias"
        for hf_n, g_n in (("self_attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"),
                          ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down"),
                          ("input_layernorm", "attn_norm"), ("post_attention_layernorm", "ffn_norm")):
            names[f"layers.{i}.{hf_n}.weight"] = f"blk.{i}.{g_n}.weight"
    state = {k: torch.from_numpy(w[v]) for k, v in names.items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), missing

    def run(embeds: np.ndarray, pos3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            out = hf(inputs_embeds=torch.from_numpy(embeds)[None],
                     position_ids=torch.from_numpy(pos3.astype(np.int64))[:, None, :], use_cache=False)
        h = out.last_hidden_state[0].numpy()
        return h, h @ w["output.weight"].T

    return run


def _image_like_prompt(model: LlamaModel) -> tuple[np.ndarray, np.ndarray]:
    """8 text rows, a 3x4 'image' (t fixed, h=row, w=col), then 6 text rows: TMRoPE-style positions."""
    e = model.embed_tokens(_prompt(26, seed=4))
    p = 8
    t = list(range(p))
    grid = [(p, p + r, p + c) for r in range(3) for c in range(4)]
    nxt = p + 4
    rows = [(i, i, i) for i in t] + grid + [(nxt + i,) * 3 for i in range(6)]
    pos3 = np.array(rows).T
    return e, pos3


def test_mrope_positions_match_transformers(model: LlamaModel) -> None:
    run = _hf_reference(SPEC)
    e, pos3 = _image_like_prompt(model)
    pos4 = np.vstack([pos3, np.zeros((1, pos3.shape[1]), int)])
    h_ref, l_ref = run(e, pos3)
    with _ctx(model, kv_f32=True) as c:  # full float32 path for a tight bound
        got = c.decode_embeddings(e, positions=pos4, logits="all", hidden="all")
        assert c.next_pos() == int(pos3.max()) + 1 and c.n_tokens() == 26
        swapped = pos4[[0, 2, 1, 3]]  # h and w exchanged: must change the result
        c.clear()
        bad = c.decode_embeddings(e, positions=swapped, logits="all", hidden="all")
    tol = 1e-4  # measured 1.2e-5 (hidden) and 2.8e-5 (logits, |max| ~10)
    assert np.abs(got.hidden - h_ref).max() < tol
    assert np.abs(got.logits - l_ref).max() < tol
    assert np.abs(bad.hidden - h_ref).max() > 10 * tol


def test_chunked_decode_and_hidden_chunks_agree(model: LlamaModel) -> None:
    ids = _prompt(150, seed=5)
    with _ctx(model, n_batch=256) as c:
        one = c.decode_tokens(ids, logits="all")
    with _ctx(model, n_batch=32, hidden_chunk=7) as c:
        split = c.decode_tokens(ids, logits=[0, 31, 32, 149], hidden=[5, 100])
        assert c.n_tokens() == 150
    assert list(split.logits_rows) == [0, 31, 32, 149] and list(split.hidden_rows) == [5, 100]
    np.testing.assert_allclose(split.logits, one.logits[[0, 31, 32, 149]], rtol=0, atol=1e-6)


def _continue(c: LlamaContext, ids: list[int], seq: int = 0) -> np.ndarray:
    return c.decode_tokens(ids, seq_id=seq, logits="all").logits


def test_remove_tail_fork_and_clear(model: LlamaModel) -> None:
    a, b, tail = _prompt(30, 6), _prompt(10, 7), _prompt(5, 8)
    with _ctx(model) as c:
        c.decode_tokens(a)
        ref = _continue(c, tail)
        c.clear()
        c.decode_tokens(a)
        c.decode_tokens(b)  # an interrupted reply, then dropped
        c.remove(0, 30)
        assert (c.n_tokens(), c.next_pos()) == (30, 30)
        np.testing.assert_array_equal(_continue(c, tail), ref)
        c.remove(0, 30)
        c.fork(0, 2)
        assert c.n_tokens(2) == 30
        np.testing.assert_array_equal(_continue(c, tail, seq=2), ref)
        c.decode_tokens(b, seq_id=0)  # seq 0 moves on; seq 2 is unaffected
        c.remove(2, 30)
        np.testing.assert_array_equal(_continue(c, tail, seq=2), ref)
        c.clear(2)
        assert c.n_tokens(2) == 0 and c.n_tokens(0) == 40
        c.clear()
        assert c.n_tokens(0) == 0 and c.seq_pos_range(0) == (-1, -1)


def test_state_roundtrip(model: LlamaModel, tmp_path: Path) -> None:
    e, pos3 = _image_like_prompt(model)
    pos4 = np.vstack([pos3, np.zeros((1, 26), int)])
    tail = _prompt(6, 9)
    with _ctx(model) as c:
        c.decode_embeddings(e, positions=pos4, logits=None)
        state = c.get_state(0)
        c.save_state(str(tmp_path / "chat.kv"), 0)
        ref = _continue(c, tail)
    with _ctx(model) as c2:
        c2.decode_tokens(_prompt(3, 10), seq_id=1)  # other sequences keep their content
        c2.set_state(state, 3)
        assert (c2.n_tokens(3), c2.next_pos(3)) == (26, int(pos3.max()) + 1)
        np.testing.assert_array_equal(_continue(c2, tail, seq=3), ref)
        c2.load_state(str(tmp_path / "chat.kv"), 0)
        np.testing.assert_array_equal(_continue(c2, tail, seq=0), ref)
        assert c2.n_tokens(1) == 3
        with pytest.raises(ModelFileError):
            c2.set_state(state[:-10], 0)
        with pytest.raises(ModelFileError):
            c2.set_state(b"not a state", 0)


def test_state_from_another_model_is_rejected(model: LlamaModel, tmp_path: Path) -> None:
    with _ctx(model) as c:
        c.decode_tokens(_prompt(5))
        state = c.get_state(0)
    other = build_tiny_gguf(tmp_path / "other.gguf", TinySpec(n_layer=1))
    with LlamaModel(other, n_threads=1) as m2, _ctx(m2) as c2, pytest.raises(ModelFileError, match="different model"):
        c2.set_state(state, 0)


def test_context_overflow_is_atomic(model: LlamaModel) -> None:
    with _ctx(model, n_ctx=64, n_batch=16) as c:
        n = c.n_ctx - 24  # llama.cpp may round n_ctx up
        c.decode_tokens(_prompt(n))
        with pytest.raises(ContextOverflowError):
            c.decode_tokens(_prompt(40, 2))  # one 16-row chunk fits, the next does not: all rolled back
        assert c.n_tokens() == n and c.seq_pos_range() == (0, n - 1)
        c.decode_tokens(_prompt(20, 3))
        assert c.n_tokens() == n + 20


def test_invalid_inputs_raise_value_error(model: LlamaModel) -> None:
    with _ctx(model) as c:
        c.decode_tokens(_prompt(5))
        e = model.embed_tokens(_prompt(3))
        bad = [
            lambda: c.decode_tokens([SPEC.n_vocab]),
            lambda: c.decode_tokens([-1]),
            lambda: c.decode_tokens([]),
            lambda: c.decode_tokens([1.5]),
            lambda: c.decode_tokens([1, 2], seq_id=4),
            lambda: c.decode_embeddings(e[:, :10]),
            lambda: c.decode_embeddings(np.full((2, SPEC.n_embd), np.nan)),
            lambda: c.decode_embeddings(e, positions=[9, 8, 10]),
            lambda: c.decode_embeddings(e, positions=np.ones((3, 3), int)),
            lambda: c.decode_tokens([1, 2], positions=np.array([[5, 6], [5, 6], [7, 8], [0, 0]])),
            lambda: c.decode_tokens([1, 2], positions=[2, 3]),  # M-RoPE text must move past the cache
            lambda: c.decode_tokens([1, 2], positions=[5, 5]),  # a shared pair would see each other
            lambda: c.decode_tokens([1, 2], logits=[2]),
            lambda: c.decode(tokens=[1], embeddings=e),
            lambda: c.remove(0, 5, 2),
        ]
        for i, f in enumerate(bad):
            with pytest.raises(ValueError):
                f()
                pytest.fail(f"case {i} accepted")
        assert c.n_tokens() == 5 and c.next_pos() == 5
        assert c.decode_tokens([1]).logits.shape == (1, SPEC.n_vocab)


def test_should_stop_between_chunks(model: LlamaModel) -> None:
    calls = []
    with _ctx(model, n_batch=16) as c:
        with pytest.raises(DecodeInterrupted) as info:
            c.decode_tokens(_prompt(50), should_stop=lambda: calls.append(1) or len(calls) >= 2)
        assert info.value.n_done == 32 and c.n_tokens() == 32


def test_two_threads_share_a_model(model: LlamaModel) -> None:
    prompts = [_prompt(60, s) for s in (11, 12)]
    with _ctx(model) as c:
        expected = []
        for p in prompts:
            c.clear()
            expected.append(c.decode_tokens(p, logits="all").logits)
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        with _ctx(model, n_batch=8) as ci:
            for _ in range(3):
                ci.clear()
                results[i] = ci.decode_tokens(prompts[i], logits="all").logits

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        np.testing.assert_allclose(results[i], expected[i], rtol=0, atol=1e-4)


def test_plain_rope_model(tmp_path: Path) -> None:
    spec = TinySpec(arch="qwen2")
    with LlamaModel(build_tiny_gguf(tmp_path / "q2.gguf", spec), n_threads=1) as m, _ctx(m) as c:
        assert not m.uses_mrope and m.n_pos_per_embd == 1
        ids = _prompt(12, 13)
        a = c.decode_tokens(ids, logits="all").logits
        c.clear()
        b = c.decode_embeddings(m.embed_tokens(ids), positions=np.arange(12), logits="all").logits
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
        with pytest.raises(ValueError, match="continue at 12"):
            c.decode_tokens([1], positions=[13])
        with pytest.raises(ValueError):
            c.decode_embeddings(m.embed_tokens([1]), positions=np.zeros((4, 1), int))
        assert c.decode_tokens([1]).logits.shape == (1, spec.n_vocab) and c.next_pos() == 13


def test_shared_position_pair(model: LlamaModel) -> None:
    """TMRoPE gives <|vision_bos|><|audio_bos|> one position. In one batch llama.cpp lets two rows
    with identical (t, h, w) see each other; decoding the second row in its own embedding call
    (allowed to repeat the last position) reproduces the reference's causal attention."""
    run = _hf_reference(SPEC)
    e = model.embed_tokens(_prompt(6, seed=14))
    t = np.array([0, 1, 2, 2, 3, 4])
    h_ref, _ = run(e, np.stack([t, t, t]))
    with _ctx(model, kv_f32=True) as c:
        one = c.decode_embeddings(e, positions=t, hidden="all").hidden
        c.clear()
        parts = [c.decode_embeddings(e[a:b], positions=t[a:b], hidden="all").hidden for a, b in ((0, 3), (3, 6))]
    split = np.concatenate(parts)
    assert np.abs(split - h_ref).max() < 1e-4
    assert np.abs(one[2] - h_ref[2]).max() > 1e-2  # row 2 saw row 3 in the single batch


def test_grow_keeps_the_cells_and_decodes_as_a_large_context(model: LlamaModel) -> None:
    with _ctx(model, n_ctx=64, n_seq_max=1) as small:
        n0 = small.n_ctx  # llama.cpp may round the size up
        ids = _prompt(n0 - 10, seed=5)
        more = model.embed_tokens(_prompt(40, seed=6))
        with _ctx(model, n_ctx=4 * n0, n_seq_max=1) as big:
            for c in (big, small):
                c.set_threads(1)
                c.decode_tokens(ids, logits=None)
            with pytest.raises(ContextOverflowError):  # 10 cells left: 40 more do not fit
                small.decode_embeddings(more, logits="last")
            small.grow(n0 // 2)  # smaller than now: nothing happens
            assert small.n_ctx == n0
            small.grow(4 * n0)
            assert small.n_ctx == big.n_ctx and small.threads == (1, 1)
            assert (small.n_tokens(), small.next_pos()) == (n0 - 10, n0 - 10)
            np.testing.assert_array_equal(small.stored_positions(), big.stored_positions())
            # one sequence: the same cells in the same slots, so the same arithmetic
            a, b = (c.decode_embeddings(more, logits="all", hidden="all") for c in (big, small))
            np.testing.assert_array_equal(b.logits, a.logits)
            np.testing.assert_array_equal(b.hidden, a.hidden)
            p = n0 + 30
            rows = [c.decode_row(more[0], (p, p, p, 0)) for c in (big, small)]
            np.testing.assert_array_equal(rows[1], rows[0])


def test_grow_keeps_every_sequence(model: LlamaModel) -> None:
    with _ctx(model, n_ctx=64, n_seq_max=3) as c:
        c.decode_tokens(_prompt(30, seed=7), seq_id=2, logits=None)
        c.decode_tokens(_prompt(20, seed=8), seq_id=0, logits=None)
        c.set_threads(1, 2)
        before = [(c.n_tokens(s), c.next_pos(s), c.stored_positions(s).tolist()) for s in range(3)]
        c.grow(c.n_ctx * 2)
        assert [(c.n_tokens(s), c.next_pos(s), c.stored_positions(s).tolist()) for s in range(3)] == before
        assert c.threads == (1, 2)
        c.decode_tokens(_prompt(5, seed=9), seq_id=1, logits="last")  # the new room is usable
        with pytest.raises(ValueError):
            c.grow(0)
