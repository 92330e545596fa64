"""Start-up of a whole `mbm index` process: imports, model build, weights, first batch, the rest.

    python benchmarks/startup.py                      # bundled mbm-offline + an open_clip checkpoint
    python benchmarks/startup.py --models mbm-offline --runs 5

Each measured run is a fresh interpreter indexing a fresh collection (what `mbm index` does, through
``Engine.index`` with ``mbm.cli`` imported first), timed from just before the process is spawned. The
first run of each model uses an empty mbm cache (``XDG_CACHE_HOME``: file digests, ONNX exports), as on a
machine that never ran this model; the next runs keep that cache, as every later run does. The open_clip
checkpoint is ViT-B-32-256 with random weights (``torch.manual_seed(0)``), written by this script as an
open_clip local-dir folder. Also times the plain `mbm index` command as one process.

Targets (this CPU): first batch embedded under 2 s after process start for the bundled model, under 3 s
for the open_clip checkpoint.

    python benchmarks/startup.py --image-engines --runs 5 --name startup_vit_engines

compares the open_clip checkpoint's two fast-start image sides on a CPU where it runs in fp32 (no fast
bf16): its ONNX Runtime export (the default there) and mbm's own ViT in torch (``MBM_IMAGE_ONNX=0``),
alternating fresh processes, each with its own warm cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _util import make_photo_folder, report  # noqa: E402

OPEN_CLIP_ARCH = "ViT-B-32-256"
HEAVY = ("torch", "open_clip", "timm", "torchvision", "transformers", "onnxruntime")

# runs in a new interpreter: argv = spawn time, store, model, photos, batch size
CHILD = r"""
import json, sys, time
t_python = time.time()
import mbm.cli  # what `mbm index` imports before it starts
from mbm import Engine
t_imports = time.time()
done_at = []
at_first = []
def progress(done, total):
    if done:
        done_at.append(time.time())
        if not at_first:
            at_first.append([m for m in HEAVY_NAMES if m in sys.modules])
with Engine.open(sys.argv[2], model=sys.argv[3]) as eng:
    t_call = time.time()
    report = eng.index([sys.argv[4]], progress=progress, batch_size=int(sys.argv[5]))
    t_return = time.time()
    encoder = eng.encoder()
heavy = [m for m in HEAVY_NAMES if m in sys.modules]
print(json.dumps({"t_python": t_python, "t_imports": t_imports, "t_call": t_call, "t_first": done_at[0],
                  "t_last": done_at[-1], "t_return": t_return, "t_exit": time.time(), "indexed": report.indexed,
                  "load_seconds": encoder.load_seconds, "stages": report.seconds, "precision": encoder.precision,
                  "imported": heavy, "imported_at_first_batch": at_first[0]}))
""".replace("HEAVY_NAMES", repr(HEAVY))


def make_open_clip_checkpoint(folder: Path) -> Path:
    """ViT-B-32-256 with random weights (seed 0) as an open_clip local-dir checkpoint (written once)."""
    if (folder / "open_clip_model.safetensors").is_file():
        return folder
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model(OPEN_CLIP_ARCH, pretrained=None)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "open_clip_model.safetensors"), metadata={"format": "pt"})
    config = {"model_cfg": open_clip.get_model_config(OPEN_CLIP_ARCH), "preprocess_cfg": {}}
    (tmp / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    tmp.rename(folder)
    return folder


def run_once(spec: str, photos: Path, batch: int, cache: Path, work: Path) -> dict[str, Any]:
    store = Path(tempfile.mkdtemp(prefix="store-", dir=work))
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "HF_HUB_OFFLINE": "1"}
    spawned = time.time()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(spawned), str(store), spec, str(photos), str(batch)],
        capture_output=True,
        text=True,
        env=env,
    )
    ended = time.time()
    shutil.rmtree(store, ignore_errors=True)
    if out.returncode != 0:
        sys.exit(f"{spec}: the indexing process failed:\n{out.stderr[-3000:]}")
    t = json.loads(out.stdout.strip().splitlines()[-1])
    rel = {k: round(t[k] - spawned, 3) for k in ("t_python", "t_imports", "t_call", "t_first", "t_last", "t_return")}
    return {
        "python_start_s": rel["t_python"],
        "mbm_imports_s": round(t["t_imports"] - t["t_python"], 3),
        "load_seconds": {k: round(v, 3) for k, v in t["load_seconds"].items()},
        "first_batch_s": rel["t_first"],
        "batches_done_s": rel["t_last"],
        "index_returned_s": rel["t_return"],
        "after_last_batch_s": round(t["t_return"] - t["t_last"], 3),
        "process_s": round(ended - spawned, 3),
        "indexed": t["indexed"],
        "stages": {k: round(v, 3) for k, v in t["stages"].items()},
        "precision": t["precision"],
        "imported": t["imported"],
        "imported_at_first_batch": t["imported_at_first_batch"],
    }


def cli_once(spec: str, photos: Path, batch: int, cache: Path, work: Path) -> float:
    store = Path(tempfile.mkdtemp(prefix="store-", dir=work))
    exe = Path(sys.executable).with_name("mbm")
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    out = subprocess.run(
        [str(exe), "index", str(photos), "--store", str(store), "-m", spec, "-b", str(batch), "-q", "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    wall = time.perf_counter() - t0
    shutil.rmtree(store, ignore_errors=True)
    if out.returncode != 0:
        sys.exit(f"{spec}: `mbm index` failed:\n{out.stderr[-3000:]}")
    return wall


def median_loads(runs: list[dict[str, Any]]) -> dict[str, float]:
    """The median of each model-load phase over ``runs``."""
    return {
        k: round(statistics.median(r["load_seconds"].get(k, 0.0) for r in runs), 3) for k in runs[0]["load_seconds"]
    }


def measure(spec: str, label: str, photos: Path, batch: int, runs: int, work: Path) -> dict[str, Any]:
    cache = work / f"cache-{label}"
    shutil.rmtree(cache, ignore_errors=True)
    first = run_once(spec, photos, batch, cache, work)  # empty cache: what the first run on a machine pays
    warm = [run_once(spec, photos, batch, cache, work) for _ in range(runs)]
    cli = [cli_once(spec, photos, batch, cache, work) for _ in range(runs)]
    med = {k: round(statistics.median(r[k] for r in warm), 3) for k in warm[0] if isinstance(warm[0][k], float)}
    loads = median_loads(warm)
    return {
        "model": label,
        "spec": spec,
        "precision": warm[0]["precision"],
        "imported": warm[0]["imported"],
        "imported_at_first_batch": warm[0]["imported_at_first_batch"],
        "warm_median": {**med, "load_seconds": loads},
        "first_run_empty_cache": first,
        "warm_runs": warm,
        "cli_process_s": [round(x, 3) for x in cli],
        "cli_process_median_s": round(statistics.median(cli), 3),
    }


def compare_image_engines(photos: Path, batch: int, runs: int, work: Path) -> dict[str, Any]:
    """The open_clip checkpoint started with its ONNX Runtime image side vs mbm's ViT in torch, interleaved."""
    spec = str(make_open_clip_checkpoint(work / "vitb32-256-seed0"))
    switch = {"onnx": "1", "torch": "0"}  # MBM_IMAGE_ONNX
    caches = {name: work / f"cache-engine-{name}" for name in switch}
    runs_of: dict[str, list[dict[str, Any]]] = {name: [] for name in switch}
    saved = os.environ.get("MBM_IMAGE_ONNX")
    try:
        for name, value in switch.items():  # the first run of each fills its cache (exports, start record)
            shutil.rmtree(caches[name], ignore_errors=True)
            os.environ["MBM_IMAGE_ONNX"] = value
            run_once(spec, photos, batch, caches[name], work)
        for _ in range(runs):
            for name, value in switch.items():
                os.environ["MBM_IMAGE_ONNX"] = value
                runs_of[name].append(run_once(spec, photos, batch, caches[name], work))
    finally:
        if saved is None:
            os.environ.pop("MBM_IMAGE_ONNX", None)
        else:
            os.environ["MBM_IMAGE_ONNX"] = saved
    keys = ("first_batch_s", "batches_done_s", "process_s")
    out: dict[str, Any] = {"model": f"{OPEN_CLIP_ARCH} seed-0 checkpoint", "runs": runs}
    for name, rs in runs_of.items():
        out[name] = {
            "precision": rs[0]["precision"],
            "imported_at_first_batch": rs[0]["imported_at_first_batch"],
            **{k: round(statistics.median(r[k] for r in rs), 3) for k in keys},
            "load_seconds": median_loads(rs),
            "runs": rs,
        }
    out["process_ratio_torch_over_onnx"] = round(out["torch"]["process_s"] / out["onnx"]["process_s"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--models", nargs="+", default=["mbm-offline", "open_clip"], help="mbm-offline, open_clip, or specs"
    )
    ap.add_argument("--photos", type=int, default=64, help="photo-like 3000x2000 JPEGs to index per run")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3, help="warm-cache runs per model (medians reported)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mbm-bench-startup")
    ap.add_argument("--name", default="startup", help="results file name (benchmarks/results/NAME.json)")
    ap.add_argument(
        "--image-engines",
        action="store_true",
        help="compare the open_clip checkpoint's ONNX Runtime and torch image sides instead (fp32 CPUs)",
    )
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    photos = args.work / f"photos-{args.photos}"
    make_photo_folder(photos, args.photos)
    if args.image_engines:
        ab = compare_image_engines(photos, args.batch, args.runs, args.work)
        rows = [
            (
                f"{engine} ({ab[engine]['precision']}; imported by the first batch: "
                f"{', '.join(ab[engine]['imported_at_first_batch']) or 'none'})",
                f"first batch {ab[engine]['first_batch_s']:.2f} s, all batches {ab[engine]['batches_done_s']:.2f} s, "
                f"process {ab[engine]['process_s']:.2f} s; load "
                + ", ".join(f"{k} {v:.2f}" for k, v in ab[engine]["load_seconds"].items()),
            )
            for engine in ("onnx", "torch")
        ]
        rows.append(("process time, torch / onnx", f"{ab['process_ratio_torch_over_onnx']:.2f}x"))
        report(args.name, {"photos": args.photos, "batch": args.batch, **ab}, rows)
        return
    results = []
    for model in args.models:
        spec = str(make_open_clip_checkpoint(args.work / "vitb32-256-seed0")) if model == "open_clip" else model
        label = f"{OPEN_CLIP_ARCH} seed-0 checkpoint" if model == "open_clip" else model
        results.append(measure(spec, label, photos, args.batch, args.runs, args.work))
    rows = []
    for r in results:
        w, f = r["warm_median"], r["first_run_empty_cache"]
        loads = ", ".join(f"{k} {v:.2f}" for k, v in w["load_seconds"].items())
        rows += [
            (
                f"{r['model']} ({r['precision']})",
                f"imported by the first batch: {', '.join(r['imported_at_first_batch']) or 'none of ' + '/'.join(HEAVY)}",
            ),
            ("  imported by the end", ", ".join(r["imported"]) or "none"),
            ("  python start / mbm imports", f"{w['python_start_s']:.2f} s / {w['mbm_imports_s']:.2f} s"),
            ("  model load (inside the run)", loads),
            (
                "  first batch embedded",
                f"{w['first_batch_s']:.2f} s after spawn (first run, empty cache: {f['first_batch_s']:.2f} s)",
            ),
            ("  all batches / index returned", f"{w['batches_done_s']:.2f} s / {w['index_returned_s']:.2f} s"),
            (
                "  after the last batch",
                f"{w['after_last_batch_s']:.2f} s (vectors, query encoder; first run {f['after_last_batch_s']:.2f} s)",
            ),
            ("  `mbm index` process", f"{r['cli_process_median_s']:.2f} s (median of {len(r['cli_process_s'])})"),
        ]
    load = os.getloadavg()[0]
    report(
        args.name,
        {
            "photos": args.photos,
            "batch": args.batch,
            "runs": args.runs,
            "load_avg_1m_at_end": round(load, 2),
            "results": results,
        },
        rows,
    )


if __name__ == "__main__":
    main()
