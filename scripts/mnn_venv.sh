#!/usr/bin/env bash
# Create the MNN peer venv for benchmarks/mnn_peer (optional; the suite skips MNN without it).
# Usage: bash scripts/mnn_venv.sh [VENV]   (default ~/.cache/pocketomni/mnn-venv)
#
# MNN's Python tools (mnn==3.6.1 with MNN.llm, exporter llmexport==0.0.5) live only in this venv.
# Packages come from the registry here, at setup time, and never afterwards:
# - MNN's converter imports `aliyun.log` to upload usage data and runs `pip install
#   aliyun-log-python-sdk` when that fails; an offline stand-in (benchmarks/mnn_peer/stub) is
#   installed in its place, so neither happens.
# - pip is removed from the venv at the end; the benchmark runs the venv's python by full path with
#   benchmarks/mnn_peer/guard first on PYTHONPATH and PATH (sockets blocked, a refusing `pip`).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$HOME/.cache/pocketomni/mnn-venv}"
python3 -m venv --clear "$venv"
py="$venv/bin/python"
"$py" -m pip install --quiet --upgrade pip
# CPU torch, pinned like pyproject's test extra (the machines ship its CPU build), then MNN and its exporter.
"$py" -m pip install --quiet "torch==2.13.0" "transformers<5" mnn==3.6.1 llmexport==0.0.5 \
  onnx onnxslim onnxruntime yaspin sentencepiece safetensors gguf numpy
site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cp -r "$here/benchmarks/mnn_peer/stub/aliyun" "$site/"
"$py" -c 'import aliyun.log, MNN, MNN.llm; print("MNN", MNN.version())'
# No pip left behind in the venv: nothing in it can install anything later.
"$py" -m pip uninstall --quiet --yes pip
rm -f "$venv"/bin/pip "$venv"/bin/pip3*
echo "$venv"
