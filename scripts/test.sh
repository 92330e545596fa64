#!/usr/bin/env bash
# Set up (pip + the Debian packages the data tests read) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=test,train,server,scale,preview bash scripts/setup.sh  # every extra: the Ray, Milvus and preview tests run too
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-noto-color-emoji fonts-symbola chromium chromium-driver >/dev/null) \
    || echo "warning: apt-get failed; data-builder tests that need Debian packages and the browser test will be skipped" >&2
fi
bash scripts/lint.sh
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then  # pytest: no tests collected
  echo "no tests were collected" >&2
  rc=0
fi
exit "$rc"
