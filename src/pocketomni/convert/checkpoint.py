"""Open and validate a Hugging Face Qwen2.5-Omni checkpoint folder (nothing is written here)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocketomni.convert.safetensors import TensorInfo, read_header
from pocketomni.errors import ConversionError

ARCHITECTURES = ("Qwen2_5OmniModel", "Qwen2_5OmniForConditionalGeneration")
MODEL_TYPE = "qwen2_5_omni"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# Files every conversion needs, besides the weights.
REQUIRED_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json")
# The tokenizer can come from tokenizer.json or from the slow-tokenizer pair.
TOKENIZER_CHOICES = (("tokenizer.json",), ("vocab.json", "merges.txt"))
# Files the speech components (talker / token2wav) will need.
SPEECH_FILES = ("spk_dict.pt",)


@dataclass
class Checkpoint:
    """A validated checkpoint: its configs and the location of every tensor (headers only)."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]
    preprocessor: dict[str, Any] = field(default_factory=dict)

    @property
    def thinker(self) -> dict[str, Any]:
        return self.config["thinker_config"]

    @property
    def text(self) -> dict[str, Any]:
        return self.thinker["text_config"]

    @property
    def vision(self) -> dict[str, Any]:
        return self.thinker["vision_config"]

    @property
    def audio(self) -> dict[str, Any]:
        return self.thinker["audio_config"]

    def file(self, name: str) -> Path:
        return self.path / name

    def require(self, name: str) -> TensorInfo:
        """The tensor `name`, or a ConversionError naming it."""
        try:
            return self.tensors[name]
        except KeyError:
            raise ConversionError(
                f"tensor {name} is missing from the checkpoint in {self.path}. The download is incomplete or "
                "this is not an original Qwen2.5-Omni checkpoint; re-download it."
            ) from None


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConversionError(f"cannot read {path}: {e}. Re-download this file.") from e


def _check_model(config: dict[str, Any], path: Path) -> None:
    archs = config.get("architectures") or []
    mtype = config.get("model_type")
    if mtype != MODEL_TYPE or not any(a in ARCHITECTURES for a in archs):
        raise ConversionError(
            f"{path / 'config.json'} describes model_type={mtype!r}, architectures={archs!r}; pocketomni "
            f"convert needs a Qwen2.5-Omni checkpoint (model_type {MODEL_TYPE!r}, architectures "
            f"{list(ARCHITECTURES[:1])}). Point it at a Qwen/Qwen2.5-Omni-7B or -3B download."
        )
    thinker = config.get("thinker_config")
    missing = [
        k for k in ("text_config", "vision_config", "audio_config")
        if not isinstance((thinker or {}).get(k), dict)
    ]
    if missing:
        raise ConversionError(
            f"{path / 'config.json'} lacks thinker_config.{', thinker_config.'.join(missing)}. "
            "Re-download config.json from the original Qwen2.5-Omni repository."
        )


def _missing_files(path: Path, need_speech: bool) -> list[str]:
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if not any(all((path / f).is_file() for f in choice) for choice in TOKENIZER_CHOICES):
        missing.append("tokenizer.json (or vocab.json + merges.txt)")
    if not (path / INDEX_FILE).is_file() and not (path / SINGLE_FILE).is_file():
        missing.append(f"{INDEX_FILE} (or {SINGLE_FILE})")
    if need_speech:
        missing += [f for f in SPEECH_FILES if not (path / f).is_file()]
    return missing


def _tensor_locations(path: Path) -> dict[str, TensorInfo]:
    index = path / INDEX_FILE
    if not index.is_file():
        return read_header(path / SINGLE_FILE)
    weight_map = _load_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConversionError(f"{index} has no weight_map. Re-download it from the original repository.")
    shards = sorted(set(weight_map.values()))
    absent = [s for s in shards if not (path / s).is_file()]
    if absent:
        raise ConversionError(
            f"{INDEX_FILE} references {len(absent)} shard(s) missing from {path}: {', '.join(absent)}. "
            "Download every model-*.safetensors file of the repository."
        )
    tensors: dict[str, TensorInfo] = {}
    headers = {s: read_header(path / s) for s in shards}
    not_found = [n for n, s in weight_map.items() if n not in headers[s]]
    if not_found:
        raise ConversionError(
            f"{len(not_found)} tensor(s) listed in {INDEX_FILE} are not in their shard, e.g. "
            f"{not_found[0]} in {weight_map[not_found[0]]}. The shards do not match the index; "
            "re-download them."
        )
    for name, shard in weight_map.items():
        tensors[name] = headers[shard][name]
    return tensors


def open_checkpoint(hf_dir: str | Path, need_speech: bool = False) -> Checkpoint:
    """Check that `hf_dir` is a complete Qwen2.5-Omni checkpoint and index its tensors.

    Raises ConversionError (listing what is wrong and how to fix it) for a missing folder, missing
    files, a model that is not Qwen2.5-Omni, or an index that references absent shards.
    """
    path = Path(hf_dir).expanduser()
    if not path.is_dir():
        raise ConversionError(
            f"{path} is not a folder. Pass the folder of a downloaded Qwen2.5-Omni checkpoint."
        )
    if not (path / "config.json").is_file():
        raise ConversionError(
            f"{path} has no config.json. Pass the folder of a downloaded Qwen2.5-Omni checkpoint "
            "(e.g. `huggingface-cli download Qwen/Qwen2.5-Omni-7B --local-dir DIR`)."
        )
    config = _load_json(path / "config.json")
    _check_model(config, path)
    missing = _missing_files(path, need_speech)
    if missing:
        raise ConversionError(
            f"{path} is missing {len(missing)} file(s) needed for conversion: {', '.join(missing)}. "
            "Download the complete Hugging Face repository (all files, not only the weights)."
        )
    tensors = _tensor_locations(path)
    preprocessor = _load_json(path / "preprocessor_config.json")
    return Checkpoint(path=path, config=config, tensors=tensors, preprocessor=preprocessor)


def check_shapes(ckpt: Checkpoint, expected: dict[str, tuple[int, ...]]) -> None:
    """Raise one ConversionError naming every missing tensor and every shape that disagrees with config.json.
    """
    missing = [n for n in expected if n not in ckpt.tensors]
    wrong = [
        f"{n}: expected {list(s)} from config.json, found {list(ckpt.tensors[n].shape)}"
        for n, s in expected.items()
        if n in ckpt.tensors and tuple(ckpt.tensors[n].shape) != tuple(s)
    ]
    problems = []
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        problems.append(f"{len(missing)} tensor(s) missing: {shown}")
    if wrong:
        shown = "; ".join(wrong[:8]) + (f"; and {len(wrong) - 8} more" if len(wrong) > 8 else "")
        problems.append(f"{len(wrong)} tensor shape(s) do not match config.json: {shown}")
    if problems:
        raise ConversionError(
            f"checkpoint {ckpt.path} does not match its config.json: " + ". ".join(problems)
            + ". The weights and config.json come from different models or the download is incomplete; "
            "re-download the repository."
        )


def cfg_get(cfg: dict[str, Any], *keys: str, default: Any = None, where: str = "config") -> Any:
    """The first present key of `keys` in `cfg`; `default` if given, else a ConversionError."""
    for k in keys:
        if k in cfg and cfg[k] is not None:
            return cfg[k]
    if default is not None:
        return default
    raise ConversionError(
        f"config.json ({where}) lacks {' / '.join(keys)}. Re-download config.json from the original "
        "repository."
    )
