"""`pocketomni.json`: the small manifest a converted model folder carries, and how folders are recognised.

Format (JSON object, version 1)::

    {
      "format": "pocketomni",            # constant marker
      "format_version": 1,
      "converter_version": "0.1.0",      # pocketomni version that wrote the folder
      "created": "2025-01-01T00:00:00Z",
      "source": {                        # summary of the Hugging Face checkpoint
        "name": "Qwen2.5-Omni-7B",       # checkpoint folder name
        "model_type": "qwen2_5_omni", "architectures": ["Qwen2_5OmniModel"],
        "thinker": {"hidden_size": .., "num_hidden_layers": .., "num_attention_heads": ..,
                    "num_key_value_heads": .., "head_dim": .., "intermediate_size": ..,
                    "vocab_size": .., "mrope_section": [t, h, w]},
        "vision": {...sizes...}, "audio": {...sizes...},
        "parameters": {"thinker": int, "vision": int, "audio": int}
      },
      "files": {                         # component -> file in this folder
        "thinker": {"path": "thinker-q4_k_m.gguf", "type": "q4_k_m", "bytes": int},
        "mmproj":  {"path": "mmproj-f16.gguf",     "type": "f16",    "bytes": int}
        # later: "talker" (same fields), "token2wav" (same fields)
      }
    }

A folder without a manifest is recognised as a community download when it holds exactly one thinker
file `*Qwen2.5-Omni*.gguf` (not starting with `mmproj`) and at most one `mmproj-*.gguf`; such a
folder has no talker / token2wav, so it serves text (and image/audio input) but not speech.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pocketomni.errors import ModelFileError

MANIFEST = "pocketomni.json"
FORMAT = "pocketomni"
FORMAT_VERSION = 1
COMPONENTS = ("thinker", "mmproj", "talker", "token2wav")


def manifest_dict(version: str, source: dict[str, Any], files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The manifest content for the given source summary and component files."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "converter_version": version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": source,
        "files": files,
    }


def write_manifest(path: Path, content: dict[str, Any]) -> None:
    """Write a manifest atomically (temp file, then rename)."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(content, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """Read and check `folder/pocketomni.json`; ModelFileError if absent, malformed or incomplete."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(
            f"{path} not found. Convert a checkpoint with `pocketomni convert HF_DIR {folder}`."
        ) from None
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path} is not valid JSON ({e}). Re-run `pocketomni convert`.") from e
    if data.get("format") != FORMAT or not isinstance(data.get("files"), dict):
        raise ModelFileError(f"{path} is not a pocketomni manifest. Re-run `pocketomni convert`.")
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFileError(f"{path} was written by a newer pocketomni; upgrade pocketomni.")
    missing = [f["path"] for f in data["files"].values() if not (Path(folder) / f["path"]).is_file()]
    if missing:
        raise ModelFileError(
            f"{path} lists missing file(s): {', '.join(missing)}. Re-run `pocketomni convert`."
        )
    return data


def locate_model_files(folder: str | Path) -> dict[str, Path]:
    """Component -> GGUF path for a converted folder (via its manifest) or a community download."""
    root = Path(folder)
    if (root / MANIFEST).is_file():
        return {k: root / v["path"] for k, v in read_manifest(root)["files"].items()}
    ggufs = sorted(p for p in root.glob("*.gguf") if not p.name.startswith("."))
    mmprojs = [p for p in ggufs if p.name.lower().startswith("mmproj")]
    thinkers = [p for p in ggufs if "qwen2.5-omni" in p.name.lower() and p not in mmprojs]
    if len(thinkers) != 1 or len(mmprojs) > 1:
        raise ModelFileError(
            f"{root} has no {MANIFEST} and does not hold exactly one *Qwen2.5-Omni*.gguf and at most one "
            f"mmproj-*.gguf (found {[p.name for p in thinkers + mmprojs]}). Convert with "
            "`pocketomni convert` or keep one model per folder."
        )
    found = {"thinker": thinkers[0]}
    if mmprojs:
        found["mmproj"] = mmprojs[0]
    return found
