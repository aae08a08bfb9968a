"""Every broken checkpoint stops with a ConversionError that names the problem, before anything is written."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pocketomni.cli.main import main
from pocketomni.convert import convert_checkpoint
from pocketomni.errors import ConversionError


@pytest.fixture(scope="module")
def source(tiny_checkpoint: Path) -> Path:
    return tiny_checkpoint


def clone(src: Path, dst: Path, skip: tuple[str, ...] = (), config: Callable[[dict], None] | None = None,
          index: Callable[[dict], None] | None = None) -> Path:
    """A copy of checkpoint `src` made of symlinks, minus `skip`, with config.json / index edited."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name in skip:
            continue
        if (f.name == "config.json" and config) or (f.name == "model.safetensors.index.json" and index):
            data = json.loads(f.read_text())
            (config if f.name == "config.json" else index)(data)  # type: ignore[misc]
            (dst / f.name).write_text(json.dumps(data))
        else:
            (dst / f.name).symlink_to(f)
    return dst


def expect_error(hf: Path, out: Path, match: str, **kw: str) -> ConversionError:
    with pytest.raises(ConversionError, match=match) as e:
        convert_checkpoint(hf, out, progress=False, **kw)
    assert not out.exists(), "a failed conversion must not create OUT_DIR"
    return e.value


def test_not_qwen_omni(source: Path, tmp_path: Path) -> None:
    def edit(c: dict) -> None:
        c["architectures"], c["model_type"] = ["Qwen2ForCausalLM"], "qwen2"

    err = expect_error(clone(source, tmp_path / "hf", config=edit), tmp_path / "out", "Qwen2.5-Omni")
    assert "Qwen2ForCausalLM" in str(err)


def test_missing_files_are_listed(source: Path, tmp_path: Path) -> None:
    gone = ("tokenizer_config.json", "preprocessor_config.json", "tokenizer.json")
    hf = clone(source, tmp_path / "hf", skip=gone)
    err = str(expect_error(hf, tmp_path / "out", "missing 2 file"))
    assert "tokenizer_config.json" in err and "preprocessor_config.json" in err
    # vocab.json + merges.txt still provide the tokenizer, so tokenizer.json is not demanded
    assert "tokenizer.json (or" not in err
    hf2 = clone(source, tmp_path / "hf2", skip=("tokenizer.json", "vocab.json",
                                                "model.safetensors.index.json"))
    err = str(expect_error(hf2, tmp_path / "out", "missing 2 file"))
    assert "tokenizer.json (or vocab.json + merges.txt)" in err and "model.safetensors.index.json" in err


def test_index_referencing_missing_shard(source: Path, tmp_path: Path) -> None:
    shard = max(source.glob("model-*.safetensors")).name
    err = expect_error(clone(source, tmp_path / "hf", skip=(shard,)), tmp_path / "out", "missing from")
    assert shard in str(err)


def test_missing_tensor_is_named(source: Path, tmp_path: Path) -> None:
    name = "thinker.model.layers.1.mlp.up_proj.weight"

    def drop(ix: dict) -> None:
        del ix["weight_map"][name]

    hf = clone(source, tmp_path / "hf", index=drop)
    err = expect_error(hf, tmp_path / "out", "1 tensor\\(s\\) missing")
    assert name in str(err)
    vis = "thinker.visual.merger.mlp.2.bias"

    def drop_vis(ix: dict) -> None:
        del ix["weight_map"][vis]

    hf2 = clone(source, tmp_path / "hf2", index=drop_vis)
    assert vis in str(expect_error(hf2, tmp_path / "out", "missing"))


def test_shape_mismatch_names_expected_and_found(source: Path, tmp_path: Path) -> None:
    text_cfg = json.loads((source / "config.json").read_text())["thinker_config"]["text_config"]
    real = text_cfg["intermediate_size"]

    def edit(c: dict) -> None:
        c["thinker_config"]["text_config"]["intermediate_size"] = real + 32

    hf = clone(source, tmp_path / "hf", config=edit)
    err = str(expect_error(hf, tmp_path / "out", "do not match config.json"))
    assert "thinker.model.layers.0.mlp.down_proj.weight" in err
    assert f"expected [{real + 32}" in err or f", {real + 32}]" in err
    assert f"found [{real}" in err or f", {real}]" in err


def test_unknown_quant_types(source: Path, tmp_path: Path) -> None:
    expect_error(source, tmp_path / "out", "unknown --quant 'q3_k'.*q4_k_m", quant="q3_k")
    expect_error(source, tmp_path / "out", "unknown --mmproj-quant 'q4_k_m'.*q8_0", mmproj_quant="q4_k_m")


def test_not_a_folder_and_out_dir_is_a_file(source: Path, tmp_path: Path) -> None:
    expect_error(tmp_path / "nowhere", tmp_path / "out", "not a folder")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConversionError, match="not a folder"):
        convert_checkpoint(source, f, progress=False)
    assert f.read_text() == "x"


def test_failed_conversion_leaves_existing_out_dir_untouched(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    def edit(c: dict) -> None:
        c["thinker_config"]["text_config"]["hidden_size"] += 1

    with pytest.raises(ConversionError):
        convert_checkpoint(clone(source, tmp_path / "hf", config=edit), out, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_cli_reports_errors_with_exit_code_2(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "out"), "--no-progress"]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_failure_while_writing_leaves_no_partial_files(source: Path, tmp_path: Path, monkeypatch) -> None:
    from pocketomni.convert import pipeline

    def boom(src: Path, dst: Path, quant: str, threads: int | None = None) -> None:
        assert src.is_file() and src.name.startswith(".")  # the intermediate exists under a temp name
        raise ConversionError("simulated quantizer failure")

    monkeypatch.setattr(pipeline, "llama_quantize", boom)
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match="simulated"):
        convert_checkpoint(source, out, quant="q8_0", progress=False)
    assert not out.exists()
    out.mkdir()
    with pytest.raises(ConversionError, match="simulated"):
        convert_checkpoint(source, out, quant="q8_0", progress=False)
    assert list(out.iterdir()) == []
