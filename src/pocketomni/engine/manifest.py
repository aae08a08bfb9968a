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
CONVERSION_ID_KEY = "pocketomni.conversion_id"  # GGUF metadata key: the conversion that wrote the file


def manifest_dict(version: str, source: dict[str, Any], files: dict[str, dict[str, Any]],
                  conversion_id: str | None = None) -> dict[str, Any]:
    """The manifest content for the given source summary and component files."""
    out = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "converter_version": version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": source,
        "files": files,
    }
    if conversion_id is not None:
        out["conversion_id"] = conversion_id
    return out


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
    check_manifest(data, Path(folder), path)
    check_files(data, Path(folder), path)
    return data


def check_files(data: dict[str, Any], folder: Path, path: Path) -> None:
    """Each listed file has the size the manifest records and the manifest's conversion id (when it has
    one): a folder mixing files of two conversions fails here, naming the odd file."""
    from pocketomni.gguf_file import GGUFFile

    cid = data.get("conversion_id")
    for entry in data["files"].values():
        f = folder / entry["path"]
        size = f.stat().st_size
        if "bytes" in entry and entry["bytes"] != size:
            raise ModelFileError(
                f"{f} has {size} bytes but {path} records {entry['bytes']}: it is truncated or was replaced. "
                "Re-run `pocketomni convert` (with --force) into this folder."
            )
        if isinstance(cid, str):
            got = GGUFFile.open(f).metadata.get(CONVERSION_ID_KEY)
            if got != cid:
                raise ModelFileError(
                    f"{f} comes from another conversion (id {got}) than {path} (id {cid}): the folder mixes "
                    "files of two conversions. Re-run `pocketomni convert` (with --force) into this folder."
                )


def check_manifest(data: Any, folder: Path, path: Path) -> None:
    """ModelFileError naming `path` unless `data` is a well-formed manifest whose files lie inside
    `folder` and exist."""
    def bad(why: str) -> ModelFileError:
        return ModelFileError(f"{path} is not a valid pocketomni manifest ({why}). Re-run `pocketomni convert`.")

    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise bad("not a JSON object with format 'pocketomni'")
    version = data.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise bad(f"format_version {version!r} is not a positive integer")
    if version > FORMAT_VERSION:
        raise ModelFileError(f"{path} was written by a newer pocketomni; upgrade pocketomni.")
    if "conversion_id" in data and not isinstance(data["conversion_id"], str):
        raise bad("'conversion_id' is not a string")
    files = data.get("files")
    if not isinstance(files, dict):
        raise bad("'files' is not an object")
    if "thinker" not in files:
        raise bad("it lists no thinker file")
    missing = []
    for component, entry in files.items():
        if component not in COMPONENTS:
            raise bad(f"unknown component {component!r}; expected {', '.join(COMPONENTS)}")
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not entry["path"]:
            raise bad(f"the {component} entry needs a 'path' string")
        rel = Path(entry["path"])
        if rel.is_absolute() or ".." in rel.parts or rel.name in ("", "."):
            raise bad(f"the {component} path {entry['path']!r} leaves the model folder")
        for key, kind in (("type", str), ("bytes", int)):
            if key in entry and (not isinstance(entry[key], kind) or isinstance(entry[key], bool)):
                raise bad(f"the {component} entry's {key!r} is not a {kind.__name__}")
        if not (folder / rel).is_file():
            missing.append(entry["path"])
    if missing:
        raise ModelFileError(f"{path} lists missing file(s): {', '.join(missing)}. Re-run `pocketomni convert`.")


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
