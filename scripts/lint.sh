#!/usr/bin/env bash
# Lint, format check and type check of the whole tree (configured in pyproject.toml); run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
