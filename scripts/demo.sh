#!/usr/bin/env bash
# Quick start: install mbm, index the demo folder, run a few searches. Offline; a throwaway store.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MBM_HOME="${MBM_HOME:-$(pwd)/.demo-store}"
MODEL=${MBM_DEMO_MODEL:-$(.venv/bin/python -c "from mbm.models.factory import bundled_models as b; print((b() or ['mbm-tiny'])[0])")}
rm -rf "$MBM_HOME/collections/demo"  # a fresh demo collection each time (the store is a throwaway)
if [ "$MODEL" = mbm-tiny ]; then
  echo "NOTE: no trained model is bundled in this checkout; using mbm-tiny (random weights)." >&2
  echo "      Results below show the machinery working, not meaningful ranking." >&2
fi
.venv/bin/mbm index data/demo --collection demo --model "$MODEL" -v
# queries worded unlike the training captions (the last two find photos); benchmarks/demo_queries.py scores 30 of them
for q in "red car" "kitty" "musical instrument" "a boat" "something to read" "a cup of coffee" "a rocket on a launch pad"; do
  echo
  echo "\$ mbm search \"$q\" -c demo -k 3"
  .venv/bin/mbm search "$q" --collection demo -k 3
done
echo
first=$(ls data/demo | head -n 1)
echo "\$ mbm search --image data/demo/$first -c demo -k 3   # image -> image"
.venv/bin/mbm search --image "data/demo/$first" --collection demo -k 3
