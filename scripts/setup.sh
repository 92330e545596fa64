#!/usr/bin/env bash
# Create .venv and install mbm with its test, training and server extras (EXTRAS=a,b to choose). Idempotent: a second run is quick.
# torch/torchvision are pinned to a pair that installs and imports together on Linux x86-64
# (override with TORCH_PACKAGES="torch==X torchvision==Y", e.g. for a CPU-only or aarch64 build).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_PACKAGES=${TORCH_PACKAGES:-"torch==2.14.1 torchvision==0.29.1"}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q --disable-pip-version-check $TORCH_PACKAGES
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${EXTRAS:-test,train,server}]"
echo "mbm installed in $(pwd)/.venv — run .venv/bin/mbm --help" >&2
