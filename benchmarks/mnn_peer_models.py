"""The models of the MNN peer benchmark: one synthetic decoder, written for both engines.

For a shape ("thinker-3b", "thinker-7b", "talker-3b") and a layer count, the tensors come from the
synthetic Qwen2.5-Omni checkpoint of `pocketomni synth` (same seed, same values), with
`num_hidden_layers` set to the count (real widths, fewer layers: speed per layer is linear in the count).

- llama.cpp: our converter's own thinker / talker plan (bf16 intermediate) and quantizer, one GGUF per
  format, exactly as `pocketomni convert` writes them.
- MNN: a Hugging Face Qwen2ForCausalLM folder (bf16 safetensors, config.json, the Qwen tokenizer files)
  holding the same values; the talker's input table is the converter's computed `token_embd`
  (W @ codec_embed + b) and its head is the codec head, so both engines run the same matrices.
  llmexport turns that folder into MNN files (mnn_peer.export_mnn, in the MNN venv).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pocketomni.convert import qwen_vocab
from pocketomni.convert.checkpoint import Checkpoint
from pocketomni.convert.quantize import llama_quantize
from pocketomni.convert.safetensors import TensorInfo
from pocketomni.convert.synth import SyntheticFiles
from pocketomni.convert.synth_shapes import MODEL_NAMES, PREPROCESSOR_CONFIG, checkpoint_shapes, preset_config
from pocketomni.convert.talker import _token_embd, talker_plan
from pocketomni.convert.thinker import thinker_plan
from pocketomni.convert.tokenizer import load_tokenizer
from pocketomni.convert.writer import write_gguf

SHAPES = {"thinker-3b": ("3b", "thinker"), "thinker-7b": ("7b", "thinker"), "talker-3b": ("3b", "talker"),
          "thinker-tiny": ("tiny", "thinker"), "talker-tiny": ("tiny", "talker")}


def peer_checkpoint(shape: str, layers: int) -> Checkpoint:
    """The synthetic checkpoint of `shape` with `layers` decoder layers in the measured component."""
    preset, part = SHAPES[shape]
    config = preset_config(preset)
    block = config["thinker_config"]["text_config"] if part == "thinker" else config["talker_config"]
    block["num_hidden_layers"] = layers
    path = Path(f"{MODEL_NAMES[preset]}-synthetic")
    keep = ("thinker.model.", "thinker.lm_head.") if part == "thinker" else ("talker.",)
    tensors = {n: TensorInfo(n, path, "BF16", s, 0, 2 * math.prod(s))
               for n, s in checkpoint_shapes(config).items() if n.startswith(keep)}
    return Checkpoint(path=path, config=config, tensors=tensors, preprocessor=dict(PREPROCESSOR_CONFIG))


def decoder_config(ckpt: Checkpoint, part: str) -> dict[str, Any]:
    c = ckpt.text if part == "thinker" else ckpt.config["talker_config"]
    return c


def write_gguf_bf16(shape: str, layers: int, out: Path, seed: int = 0) -> Path:
    """Our lossless intermediate GGUF (what `pocketomni convert` hands to llama.cpp's quantizer)."""
    _, part = SHAPES[shape]
    ckpt = peer_checkpoint(shape, layers)
    files = SyntheticFiles(seed, ckpt.config)
    meta = {"name": f"peer {shape}", "component": part}
    if part == "thinker":
        tok = load_tokenizer(qwen_vocab.vocab_dir(), ckpt.config, int(ckpt.text["vocab_size"]))
        plan = thinker_plan(ckpt, files, tok, "bf16", 32, meta)
    else:
        plan = talker_plan(ckpt, files, "bf16", 32, meta)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_gguf(out, plan)
    return out


def quantized(bf16: Path, quant: str, out: Path, threads: int = 2) -> Path:
    """`bf16` quantized to `quant` by the converter's quantizer (cached by file name)."""
    if not out.is_file():
        llama_quantize(bf16, out, quant, threads)
    return out


def _bf16_tensor(files: SyntheticFiles, info: TensorInfo) -> Any:
    import torch

    bits = files.bits(info, 0, info.n_elements)
    return torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16).reshape(info.shape)


def _to_bf16(x: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(torch.bfloat16)


def write_hf(shape: str, layers: int, out: Path, seed: int = 0) -> Path:
    """The same weights as a Hugging Face Qwen2ForCausalLM folder (for llmexport)."""
    from safetensors.torch import save_file

    _, part = SHAPES[shape]
    ckpt = peer_checkpoint(shape, layers)
    files = SyntheticFiles(seed, ckpt.config)
    c = decoder_config(ckpt, part)
    prefix = "thinker.model." if part == "thinker" else "talker.model."
    tensors: dict[str, Any] = {}
    for name, info in ckpt.tensors.items():
        if name.startswith(prefix) and not (part == "talker" and name.endswith("embed_tokens.weight")):
            tensors["model." + name[len(prefix):]] = _bf16_tensor(files, info)
    if part == "thinker":
        tensors["lm_head.weight"] = _bf16_tensor(files, ckpt.tensors["thinker.lm_head.weight"])
    else:
        tensors["lm_head.weight"] = _bf16_tensor(files, ckpt.tensors["talker.codec_head.weight"])
        tensors["model.embed_tokens.weight"] = _to_bf16(np.concatenate(list(_token_embd(ckpt, files))))
    hidden, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
    config = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": hidden,
        "intermediate_size": int(c["intermediate_size"]), "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": int(c["num_key_value_heads"]),
        "head_dim": int(c.get("head_dim", hidden // heads)), "vocab_size": int(c["vocab_size"]),
        "rms_norm_eps": float(c.get("rms_norm_eps", 1e-6)), "rope_theta": float(c.get("rope_theta", 1e6)),
        "max_position_embeddings": 32768, "tie_word_embeddings": False, "hidden_act": "silu",
        "torch_dtype": "bfloat16", "use_sliding_window": False, "bos_token_id": 151643,
        "eos_token_id": 151645,
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=1))
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": 151645, "do_sample": False}))
    for f in qwen_vocab.vocab_dir().iterdir():
        shutil.copy(f, out / f.name)
    return out


def matmul_params(shape: str, layers: int) -> dict[str, int]:
    """Parameters read per decoded token (every matrix but the input table) and of the input table."""
    ckpt = peer_checkpoint(shape, layers)
    read = sum(math.prod(i.shape) for n, i in ckpt.tensors.items()
               if len(i.shape) == 2 and "embed_tokens" not in n and "codec_embed" not in n
               and "thinker_to_talker_proj" not in n)
    c = decoder_config(ckpt, SHAPES[shape][1])
    return {"matmul": read, "embedding": int(c["vocab_size"]) * int(c["hidden_size"])}
