"""What a chat keeps for the talker: per history token its id, kind, position and the thinker's final
hidden state H (float16), compared with the reference thinker; E rows are the input embeddings."""

from __future__ import annotations

import numpy as np
import torch
import transformers  # noqa: F401  (hard dependency: fail loudly if missing)
from omni_fixtures import build_checkpoint, load_processor, load_reference

import pocketomni as po
from pocketomni.chat.chat import Chat
from pocketomni.engine.positions import KIND_AUDIO, KIND_IMAGE, KIND_TEXT
from pocketomni.engine.speech import SpeechSettings

torch.set_num_threads(1)


def test_history_keeps_hidden_states_and_positions_like_the_reference(converted_tiny) -> None:
    from PIL import Image

    ckpt = build_checkpoint("base")
    model, proc = load_reference(ckpt), load_processor(ckpt)
    img = (np.random.default_rng(3).random((56, 56, 3)) * 255).astype(np.uint8)
    t = np.arange(16000) / 16000
    aud = (0.3 * np.sin(2 * np.pi * 500 * t)).astype(np.float32)
    with po.Omni.load_sync(converted_tiny("base", "f32"), n_threads=1, kv_f32=True) as omni:
        settings = SpeechSettings(options=po.SpeechOptions(max_codes=4))  # keep the spoken part short
        chat = Chat(omni.runtime, speech=True, options=po.GenerationOptions(max_tokens=5), speech_settings=settings)
        done = next(e for e in chat.send_sync("Hi", images=[img], audio=[(aud, 16000)]) if isinstance(e, po.Done))
        hist = chat._session.history
        ids = hist.ids.tolist()
        assert hist.hidden is not None and hist.hidden.dtype == np.float16 and hist.n == len(ids)
        assert ids[-4:] == list(done.tokens[:4])  # reply tokens decoded so far (the 5th is pending)
        kinds = hist.kinds
        assert (kinds == KIND_IMAGE).sum() == 4 and (kinds == KIND_AUDIO).sum() == 25
        e_rows = chat._session.input_embeddings()
        h_rows = hist.hidden.astype(np.float32)
        positions = hist.positions.copy()

    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "audio"}, {"type": "text", "text": "Hi"}]}]
    text = proc.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    enc = proc(text=[text], images=[Image.fromarray(img)], audio=[aud], return_tensors="pt")
    n_prompt = enc["input_ids"].shape[1]
    assert ids[:n_prompt] == enc["input_ids"][0].tolist()
    captured = {}
    hook = model.thinker.model.language_model.norm.register_forward_hook(lambda m, i, o: captured.__setitem__("h", o))
    full = torch.tensor([ids])
    with torch.no_grad():
        pos, _ = model.thinker.get_rope_index(full, enc["image_grid_thw"], None, torch.ones_like(full), False,
                                              enc["feature_attention_mask"].sum(-1))
        model.thinker(input_ids=full, attention_mask=torch.ones_like(full), pixel_values=enc["pixel_values"],
                      image_grid_thw=enc["image_grid_thw"], input_features=enc["input_features"],
                      feature_attention_mask=enc["feature_attention_mask"])
    hook.remove()
    np.testing.assert_array_equal(positions, pos[:, 0].numpy())
    ref_h = captured["h"][0].numpy()
    scale = np.abs(ref_h).max()
    assert np.abs(h_rows - ref_h).max() <= 1.5e-3 * scale  # float16 storage: 2^-11 relative
    # E: the thinker's input embedding of text tokens, zero at media placeholders
    text_rows = kinds == KIND_TEXT
    table = model.thinker.get_input_embeddings().weight.detach().numpy()
    np.testing.assert_array_equal(e_rows[text_rows], table[np.asarray(ids)[text_rows]])
    assert not e_rows[~text_rows].any()
