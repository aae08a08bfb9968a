"""HF folder -> model folder: validate everything, then write each GGUF under a temporary name.

Components are written in order (thinker, mmproj; the talker and token2wav will be appended the same
way): each has a plan (key/values + tensor specs with block sources), an output type, and optionally
a llama.cpp quantization pass over a lossless intermediate. Nothing touches OUT_DIR until every check
(config, files, tensor names and shapes, tokenizer, disk space) has passed, and files only get their
final names once all of them are complete, so a failed run leaves no half-written model behind.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocketomni.convert.checkpoint import Checkpoint, check_shapes, open_checkpoint
from pocketomni.convert.mmproj import MMPROJ_TYPES, audio_names, mmproj_expected, mmproj_plan, vision_names
from pocketomni.convert.quantize import LLAMA_QUANT_TYPES, llama_quantize
from pocketomni.convert.safetensors import MappedFiles
from pocketomni.convert.talker import talker_expected, talker_plan
from pocketomni.convert.thinker import DIRECT_TYPES, thinker_names, thinker_plan
from pocketomni.convert.token2wav import DEFAULT_TOKEN2WAV_TYPE, check_token2wav_type, token2wav_plan
from pocketomni.convert.tokenizer import load_tokenizer
from pocketomni.convert.writer import GGUFPlan, write_gguf
from pocketomni.engine import manifest as mf
from pocketomni.errors import ConversionError

log = logging.getLogger("pocketomni")

THINKER_QUANTS = tuple(DIRECT_TYPES) + tuple(LLAMA_QUANT_TYPES)
MMPROJ_QUANTS = tuple(MMPROJ_TYPES)
# `--quant` presets: name -> (thinker type, talker type), chosen from benchmarks/results/mnn_peer.md and
# quant_fidelity.md (issue 20). "fast": the fastest on CPU at <= 5 bits per weight (q4_0 is the type
# llama.cpp repacks for its x86/ARM kernels at every width; q4_k_m falls back to unrepacked q5_0/q6_K
# on the 896-wide talker). "faithful": the closest to the bf16 checkpoint short of f16 (q8_0, ~half
# the f16 size). An explicit --talker-quant overrides the preset's talker type.
QUANT_PRESETS = {"fast": ("q4_0", "q4_0"), "faithful": ("q8_0", "q8_0")}
DEFAULT_QUANT = "fast"
DEFAULT_MMPROJ_QUANT = "f16"


@dataclass
class ConversionResult:
    """What a conversion wrote and how long it took; `removed` names the leftovers it deleted
    (temporaries of an interrupted conversion, files of the replaced one)."""

    out_dir: Path
    files: dict[str, Path]
    seconds: float
    manifest: dict[str, Any] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)


@dataclass
class _Job:
    """One output file: its final name, how to plan it and whether llama.cpp quantizes it afterwards."""

    component: str
    filename: str
    quant: str
    plan: Callable[[MappedFiles], GGUFPlan]
    llama_quant: str | None = None


def converter_version() -> str:
    try:
        from pocketomni import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover
        return "unknown"


def check_quant(name: str, value: str, allowed: tuple[str, ...]) -> str:
    v = value.lower()
    if v not in allowed:
        raise ConversionError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}.")
    return v


def resolve_quants(quant: str, talker_quant: str | None) -> tuple[str, str]:
    """(thinker type, talker type) from `--quant` (a type or a QUANT_PRESETS name) and `--talker-quant`
    (default: the preset's talker type, or the thinker's type)."""
    q = quant.lower()
    thinker, talker = QUANT_PRESETS.get(q, (q, q))
    thinker = check_quant("--quant", thinker, THINKER_QUANTS + tuple(QUANT_PRESETS))
    return thinker, check_quant("--talker-quant", talker_quant or talker, THINKER_QUANTS)


def _n_params(shapes: dict[str, tuple[int, ...]]) -> int:
    total = 0
    for s in shapes.values():
        n = 1
        for d in s:
            n *= d
        total += n
    return total


def source_summary(
    ckpt: Checkpoint, thinker_shapes: dict[str, tuple[int, ...]], summary: dict[str, Any]
) -> dict[str, Any]:
    vs, vn = vision_names(ckpt)
    as_, an = audio_names(ckpt)
    return {
        "name": ckpt.path.name,
        "model_type": ckpt.config.get("model_type"),
        "architectures": ckpt.config.get("architectures"),
        "thinker": summary,
        "vision": vs,
        "audio": as_,
        "parameters": {
            "thinker": _n_params(thinker_shapes),
            "vision": _n_params({k: v[1] for k, v in vn.items()}),
            "audio": _n_params({k: v[1] for k, v in an.items()}),
        },
    }


def _check_disk(out_dir: Path, need: int) -> None:
    probe = out_dir
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need:
        raise ConversionError(
            f"{probe} has {free / 1e9:.1f} GB free but the conversion needs about {need / 1e9:.1f} GB. "
            "Free some space or choose another OUT_DIR."
        )


def _write_error(out: Path, e: OSError) -> ConversionError:
    """A failed write into the output folder, with the fix."""
    where = e.filename or out
    if isinstance(e, PermissionError):
        fix = "choose an OUT_DIR you can write to"
    elif e.errno in (28, 27, 122):  # ENOSPC, EFBIG, EDQUOT
        fix = "free some space or choose another OUT_DIR"
    else:
        fix = "check the OUT_DIR path"
    return ConversionError(f"cannot write the model folder {out}: {e.strerror or e} ({where}); {fix}.")


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, dynamic_ncols=True)


def convert_checkpoint(
    hf_dir: str | Path,
    out_dir: str | Path,
    quant: str = DEFAULT_QUANT,
    mmproj_quant: str = DEFAULT_MMPROJ_QUANT,
    progress: bool = True,
    threads: int | None = None,
    speech: bool = True,
    talker_quant: str | None = None,
    force: bool = False,
    token2wav_type: str = DEFAULT_TOKEN2WAV_TYPE,
) -> ConversionResult:
    """Convert a Hugging Face Qwen2.5-Omni checkpoint into a PocketOmni model folder.

    Writes `thinker-<quant>.gguf`, `mmproj-<mmproj_quant>.gguf` and `pocketomni.json` into `out_dir`;
    with `speech` (the default) also `talker-<talker_quant>.gguf` (talker_quant defaults to quant, or to
    the preset's talker type when quant names a QUANT_PRESETS entry: "fast", "faithful") and
    `token2wav-<token2wav_type>.gguf` (DiT, ECAPA, BigVGAN, speakers and the thinker->talker projection;
    token2wav_type "f16", the default, stores the network's matrices as float16, "f32" as float32).
    Raises ConversionError, before writing anything, when the checkpoint is not Qwen2.5-Omni, files or
    tensors are missing, shapes disagree with config.json, a quant type is unknown, or space is short.
    An OUT_DIR that already holds a model is replaced only with `force` (then the previous conversion's
    files the new one does not write are removed too).
    """
    t0 = time.perf_counter()
    quant, talker_quant = resolve_quants(quant, talker_quant)
    mmproj_quant = check_quant("--mmproj-quant", mmproj_quant, MMPROJ_QUANTS)
    t2w_type = check_token2wav_type(token2wav_type)
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ConversionError(f"{out} exists and is not a folder. Choose a folder for OUT_DIR.")

    # ---- validation: nothing is written before this block completes ----
    ckpt = open_checkpoint(hf_dir, need_speech=speech)
    shape, tnames = thinker_names(ckpt)
    thinker_shapes = {hf: s for hf, (_, s) in tnames.items()}
    check_shapes(ckpt, {**thinker_shapes, **mmproj_expected(ckpt), **(talker_expected(ckpt) if speech else {})})
    tok = load_tokenizer(ckpt.path, ckpt.config, shape.vocab)
    version = converter_version()
    source = source_summary(ckpt, thinker_shapes, shape.summary())

    def meta(component: str) -> dict[str, str]:
        return {"name": f"{ckpt.path.name} {component}", "component": component, "converter_version": version}

    thinker_mode = quant if quant in DIRECT_TYPES else "bf16"
    thinker_ftype = DIRECT_TYPES.get(quant, 32)  # 32 = MOSTLY_BF16 for the quantizer's intermediate
    jobs = [
        _Job("thinker", f"thinker-{quant}.gguf", quant,
             lambda files: thinker_plan(ckpt, files, tok, thinker_mode, thinker_ftype, meta("thinker")),
             llama_quant=quant if quant in LLAMA_QUANT_TYPES else None),
        _Job("mmproj", f"mmproj-{mmproj_quant}.gguf", mmproj_quant,
             lambda files: mmproj_plan(ckpt, files, mmproj_quant, meta("mmproj"))),
    ]
    if speech:
        talker_mode = talker_quant if talker_quant in DIRECT_TYPES else "bf16"
        talker_ftype = DIRECT_TYPES.get(talker_quant, 32)
        jobs += [
            _Job("talker", f"talker-{talker_quant}.gguf", talker_quant,
                 lambda files: talker_plan(ckpt, files, talker_mode, talker_ftype, meta("talker")),
                 llama_quant=talker_quant if talker_quant in LLAMA_QUANT_TYPES else None),
            _Job("token2wav", f"token2wav-{t2w_type}.gguf", t2w_type,
                 lambda files: token2wav_plan(ckpt, files, meta("token2wav"), wtype=t2w_type)),
        ]
    with MappedFiles() as files:
        plans = [job.plan(files) for job in jobs]  # builds specs only; raises config errors early
        return write_folder(out, list(zip(jobs, plans)), version=version, source=source, progress=progress,
                            threads=threads, verb="writing", t0=t0, force=force)


def write_folder(out: Path, items: Sequence[tuple[Any, GGUFPlan]], *, version: str, source: dict[str, Any],
                 progress: bool, threads: int | None, verb: str, t0: float, force: bool,
                 conversion_id: str | None = None) -> ConversionResult:
    """Write a model folder: check the disk, write each (job, plan) under a temporary name (quantizing
    with llama.cpp where `job.llama_quant` asks), then move the files into place and write the manifest.
    On any failure the partial files (and a folder this call created) are removed.

    A job names its file: `component`, `filename`, `quant`, `llama_quant`. Every file and the manifest
    carry one conversion id (CONVERSION_ID_KEY; `conversion_id`, else a random one), checked when the
    folder loads. An OUT_DIR holding
    a model is replaced only with `force`; the folder is locked while it is written, and temporaries an
    interrupted conversion left there are removed first.
    """
    previous = _previous_files(out, [job.filename for job, _ in items], force)
    total = sum(plan.nbytes for _, plan in items)
    _check_disk(out, total + sum(plan.nbytes for job, plan in items if job.llama_quant) + (64 << 20))
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _write_error(out, e) from e
    with _FolderLock(out):
        return _write_locked(out, items, version=version, source=source, progress=progress, threads=threads,
                             verb=verb, t0=t0, created=created, previous=previous, total=total,
                             conversion_id=conversion_id or uuid.uuid4().hex)


def _write_locked(out: Path, items: Sequence[tuple[Any, GGUFPlan]], *, version: str, source: dict[str, Any],
                  progress: bool, threads: int | None, verb: str, t0: float, created: bool, previous: list[str],
                  total: int, conversion_id: str) -> ConversionResult:
    removed = _remove_partials(out)
    temps: list[Path] = []
    done: dict[str, Path] = {}
    bar = _progress(total, progress)
    try:
        for job, plan in items:
            final_tmp = out / f".{job.filename}.partial"
            temps.append(final_tmp)
            if bar is not None:
                bar.set_description(f"{verb} {job.filename}")
            plan = _with_conversion_id(plan, conversion_id)
            if job.llama_quant:
                inter = out / f".{job.filename}.bf16.partial"
                temps.append(inter)
                write_gguf(inter, plan, bar)
                if bar is not None:
                    bar.set_description(f"quantizing {job.component} to {job.llama_quant}")
                llama_quantize(inter, final_tmp, job.llama_quant, threads)
                inter.unlink()
            else:
                write_gguf(final_tmp, plan, bar)
            done[job.component] = final_tmp
    except BaseException as e:
        for t in temps:
            t.unlink(missing_ok=True)
        if created and not any(out.iterdir()):
            out.rmdir()
        if isinstance(e, OSError):
            raise _write_error(out, e) from e
        raise
    finally:
        if bar is not None:
            bar.close()

    files_out: dict[str, Path] = {}
    entries: dict[str, dict[str, Any]] = {}
    try:
        for job, _ in items:
            final = out / job.filename
            os.replace(done[job.component], final)
            files_out[job.component] = final
            entries[job.component] = {"path": job.filename, "type": job.quant, "bytes": final.stat().st_size}
        content = mf.manifest_dict(version, source, entries, conversion_id)
        mf.write_manifest(out / mf.MANIFEST, content)
        for name in previous:  # the replaced conversion's files of other types
            if name not in {job.filename for job, _ in items}:
                (out / name).unlink(missing_ok=True)
                removed.append(name)
    except OSError as e:
        raise _write_error(out, e) from e
    return ConversionResult(out_dir=out, files=files_out, seconds=time.perf_counter() - t0, manifest=content,
                            removed=removed)


def _with_conversion_id(plan: GGUFPlan, conversion_id: str) -> GGUFPlan:
    """`plan` with the conversion id added to its metadata (llama.cpp's quantize copies it along)."""
    write_kv = plan.kv

    def kv(w: Any) -> None:
        write_kv(w)
        w.add_string(mf.CONVERSION_ID_KEY, conversion_id)

    return dataclasses.replace(plan, kv=kv)


def _previous_files(out: Path, names: list[str], force: bool) -> list[str]:
    """Files of a model already in `out` (its manifest's files); ConversionError without `force`."""
    if not out.is_dir():
        return []
    manifest = out / mf.MANIFEST
    found = [p.name for p in (manifest, *(out / n for n in names)) if p.exists()]
    if found and not force:
        raise ConversionError(
            f"{out} already holds a model ({', '.join(found)}); pass --force (force=True) to replace it, "
            "or choose an empty OUT_DIR."
        )
    try:
        listed = json.loads(manifest.read_text(encoding="utf-8"))["files"].values()
        return [e["path"] for e in listed if isinstance(e.get("path"), str) and "/" not in e["path"]
                and "\\" not in e["path"] and e["path"].endswith(".gguf")]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def _remove_partials(out: Path) -> list[str]:
    """Temporaries of an interrupted conversion (only names this converter writes)."""
    removed = []
    for pattern in (".*.gguf.partial", ".*.gguf.bf16.partial", f".{mf.MANIFEST}.partial"):
        for p in out.glob(pattern):
            if p.is_file():
                p.unlink()
                removed.append(p.name)
    if removed:
        log.warning("removed %d temporary file(s) of an interrupted conversion in %s: %s", len(removed), out,
                    ", ".join(sorted(removed)))
    return sorted(removed)


class _FolderLock:
    """An exclusive lock on the output folder while a conversion writes into it."""

    def __init__(self, out: Path) -> None:
        self.out, self.fd = out, -1

    def __enter__(self) -> _FolderLock:  # noqa: PYI034
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks
            return self
        self.fd = os.open(self.out, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = -1
            raise ConversionError(f"another conversion is writing into {self.out}; wait for it to finish") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)

