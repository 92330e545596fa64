"""Text queries without torch: mbm's numpy text towers vs ONNX Runtime exports of the same towers.

    python benchmarks/onnx_query_encoder.py --runs 9

For the bundled model's MiniLM (BERT) tower and an open_clip CLIP text tower
(ViT-B-32-256, random weights: the real architecture and size), measures
- a cold query encoding: a new process imports, loads the exported tower, tokenizes
  and encodes one short query (what a cold ``mbm search`` pays for its query), the
  paths interleaved run by run;
- agreement with the torch model (cosine) over ~200 varied queries;
- warm latency per query, and the size of each export on disk.
The ONNX path tokenizes with the same torch-free tokenizers as the numpy path; ORT runs
in several set-ups (one file or mapped external data, 1 or 2 threads, with or without
weight prepacking), and a control runs mbm's numpy forward over mapped float32 weights.
Rule: switch when ORT's cold time is <= 1.15 x numpy's with cosine >= 0.9999 to torch.
Exports go to a temporary folder; files come from the page cache in every run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TOWERS = {"minilm": "mbm-offline", "clip": "ViT-B-32-256:random"}
# name -> (export folder, ORT intra-op threads (0: the numpy path), ORT session config entries).
# ort-fp32: the one file torch.onnx.export writes; ort-fp16w: matrices stored float16 as the numpy
# export stores them; ort-mmap: weights in an external data file, which ORT maps instead of copying;
# noprepack: MatMul weights used in place instead of repacked at session creation. numpy-mmap-fp32,
# a control that is not mbm's code: today's numpy forward over float32 weights viewed in the mapped
# file, to tell how much of a difference comes from ORT and how much from not copying weights.
NO_PREPACK = {"session.disable_prepacking": "1"}
VARIANTS: dict[str, tuple[str, int, dict[str, str]]] = {
    "numpy": ("numpy", 0, {}), "numpy-mmap-fp32": ("numpy-fp32", 0, {}),
    "ort-fp32-1t": ("ort-fp32", 1, {}), "ort-fp32-2t": ("ort-fp32", 2, {}), "ort-fp16w-1t": ("ort-fp16w", 1, {}),
    "ort-mmap-1t": ("ort-mmap", 1, {}), "ort-mmap-noprepack-1t": ("ort-mmap", 1, NO_PREPACK),
    "ort-mmap-noprepack-2t": ("ort-mmap", 2, NO_PREPACK),
}
COLD_QUERY = "red car"
MAX_RATIO, MIN_COSINE = 1.15, 0.9999


def queries() -> list[str]:
    """~200 varied queries: short, long (past the context length), unicode, markup and empty-ish."""
    base = ["red car", "a dog on the beach", "sunset over mountains", "two people hiking", "a bowl of soup", "city at night",
            "a cat sleeping", "kitty", "puppy", "bike", "a yellow fruit", "something to read", "fire truck", "plane",
            "photo camera", "a man made of snow", "pink flowers", "rain protection", "wake up on time", "public transport"]
    odd = ["", " ", "\t\n", ".", "a", "?!", "42", "3.14159", "<end_of_text>", "<start_of_text> car", "café au lait",
           "Ünïcödé   spaces\t", "naïve façade", "東京の夜景", "кошка на диване", "😀", "🚗 red car 🚗", "A&amp;B &lt;tag&gt;",
           "ALL CAPS QUERY", "don't stop", "it's a dog's life", "x" * 300, "word " * 120, "a, b; c: d - e / f",
           "e-mail@example.com", "C++ and C#", "https://example.com/a?b=c", "  leading and trailing  ", "tab\tseparated",
           "ﬁne ligature", "Straße", "مرحبا", "नमस्ते", "🇫🇷 flag", "x̃ combining", "\u200bzero width", "100%", "#hashtag", "@user"]
    long = ["a very long description of " + ", ".join(base[i:] + base[:i]) for i in range(0, 20, 2)]
    adjectives, nouns = ["red", "small", "old", "shiny", "wooden", "happy", "dark", "striped"], ["car", "house", "tree",
                         "boat", "guitar", "umbrella", "clock", "horse", "pizza", "laptop", "snowman", "bus"]
    combos = [f"{'a' if i % 3 else 'the'} {adjectives[i % 8]} {nouns[(i * 5) % 12]}" + (" at night" if i % 4 == 0 else "")
              for i in range(200 - len(base) - len(odd) - len(long))]
    return base + odd + long + combos


# ---- the query paths, as a cold process runs them (no torch) ----

def open_encoder(variant: str, folder: Path) -> Callable[[str], Any]:
    """Import and load one path; return ``text -> (1, dim)`` L2-normalized float32."""
    sub, threads, entries = VARIANTS[variant]
    if sub == "numpy-fp32":
        encoder = _mapped_numpy_encoder(folder / sub)
        return lambda text: encoder.encode_texts([text])
    if threads == 0:
        from mbm.models.query_encoder import load_query_encoder

        fingerprint = json.loads((folder / sub / "source.json").read_text())["fingerprint"]
        encoder = load_query_encoder(folder / sub, fingerprint)
        if encoder is None:
            raise RuntimeError(f"no usable numpy query encoder in {folder / sub}")
        return lambda text: encoder.encode_texts([text])
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    for key, value in entries.items():
        options.add_session_config_entry(key, value)
    session = ort.InferenceSession(str(folder / sub / "model.onnx"), options, providers=["CPUExecutionProvider"])
    tokenize = _ort_tokenizer(json.loads((folder / sub / "tower.json").read_text()), folder / sub)

    def encode(text: str) -> Any:
        v = session.run(None, {"ids": tokenize(text)})[0]
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    return encode


def _mapped_numpy_encoder(folder: Path) -> Any:
    """mbm's numpy encoder over float32 weights that are views into the mapped safetensors file (no copy)."""
    import numpy as np

    raw = np.memmap(folder / "text_tower.safetensors", dtype=np.uint8, mode="r")
    n = int(raw[:8].view("<u8")[0])  # safetensors: u64 header size, JSON header, then the tensors' bytes
    base, header = 8 + n, json.loads(bytes(raw[8 : 8 + n]))
    weights = {k: raw[base + v["data_offsets"][0] : base + v["data_offsets"][1]].view(np.float32).reshape(v["shape"])
               for k, v in header.items() if k != "__metadata__"}
    config = json.loads((folder / "text_tower.json").read_text())
    if config["format"] == "mbm-text-numpy-bert":
        from tokenizers import Tokenizer

        from mbm.models.text_numpy_bert import NumpyBertEncoder

        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tokenizer.enable_truncation(max_length=int(config["context_length"]))
        tokenizer.no_padding()
        return NumpyBertEncoder(config, weights, tokenizer)
    from mbm.models.text_numpy import ClipTokenizer, NumpyTextEncoder

    return NumpyTextEncoder(config, weights, ClipTokenizer(config["tokenizer"]["context_length"]))


def _fp32_copy(src: Path, dst: Path) -> None:
    """The numpy export with every tensor stored float32 (mbm stores big towers' matrices as float16)."""
    import shutil

    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import save_file

    shutil.copytree(src, dst)
    with safe_open(str(src / "text_tower.safetensors"), framework="numpy") as f:
        metadata, weights = f.metadata(), {k: f.get_tensor(k).astype(np.float32) for k in f.keys()}  # noqa: SIM118 - a safe_open handle is not iterable
    save_file(weights, str(dst / "text_tower.safetensors"), metadata=metadata)


def _ort_tokenizer(config: dict, folder: Path) -> Callable[[str], Any]:
    import numpy as np

    if config["kind"] == "clip-bpe":
        from mbm.models.text_numpy import ClipTokenizer

        clip = ClipTokenizer(config["context_length"])
        # causal mask: nothing after the pooled (EOT = highest id) token changes it, as the numpy path uses
        return lambda text: (ids := clip([text]))[:, : int(ids.argmax(1).max()) + 1]
    from tokenizers import Tokenizer

    from mbm.models.text_numpy_bert import clean

    bert = Tokenizer.from_file(str(folder / "tokenizer.json"))
    bert.enable_truncation(max_length=config["context_length"])
    bert.no_padding()
    return lambda text: np.asarray([bert.encode(clean(text)).ids], np.int64)


def worker_cold(variant: str, folder: Path) -> dict:
    t0 = time.perf_counter()
    import mbm  # noqa: F401 - the package import every `mbm` command pays, the same on both paths

    t1 = time.perf_counter()
    encode = open_encoder(variant, folder)
    t2 = time.perf_counter()
    encode(COLD_QUERY)
    t3 = time.perf_counter()
    return {"mbm_import": t1 - t0, "encoder_import_load": t2 - t1, "encode": t3 - t2}


def worker_warm(variant: str, folder: Path, texts: list[str], out: Path) -> dict:
    import numpy as np

    encode = open_encoder(variant, folder)
    encode(COLD_QUERY)
    rows, times = [], []
    for text in texts:
        t = time.perf_counter()
        rows.append(encode(text)[0])
        times.append(time.perf_counter() - t)
    np.save(out, np.stack(rows).astype(np.float32))
    return {"seconds": times}


# ---- exports (torch) ----

def export_all(spec: str, folder: Path, texts: list[str]) -> Any:
    """Export ``spec``'s text tower for numpy (mbm's exporter) and ONNX; return torch's embeddings of ``texts``."""
    from mbm.models.factory import load_model
    from mbm.models.query_encoder import export_query_encoder

    encoder = load_model(spec, device="cpu", precision="fp32")
    if not export_query_encoder(encoder, folder / "numpy"):
        raise RuntimeError(f"{spec}: mbm could not export its text tower for numpy")
    _fp32_copy(folder / "numpy", folder / "numpy-fp32")
    _export_onnx(encoder, folder / "ort-fp32")
    _fp16_weights(folder / "ort-fp32", folder / "ort-fp16w")
    _external_data(folder / "ort-fp32", folder / "ort-mmap")
    return encoder.encode_texts(texts)


def _export_onnx(encoder: Any, folder: Path) -> None:
    import shutil
    import warnings

    import torch

    model, hf = encoder.model, hasattr(encoder.model, "text")
    if hf:  # open_clip HFTextEncoder: ids -> pooled, projected (its padding mask is ids != pad)
        tower, config = model.text, {"kind": "bert"}
        shutil.copy(Path(folder).with_name("numpy") / "tokenizer.json", _mkdir(folder) / "tokenizer.json")
    else:
        tower, config = _clip_text_tower(model), {"kind": "clip-bpe"}
    config["context_length"] = int(getattr(encoder.tokenizer, "context_length", 77))
    ids = torch.tensor([[101, 1037, 2417, 2482, 102]] if hf else [[49406, 320, 736, 1615, 49407]])
    positions = model.text.config.max_position_embeddings if hf else model.positional_embedding.shape[0]
    # torch.export keeps the token axis symbolic; the TorchScript exporter bakes the traced length
    # into nn.MultiheadAttention's reshapes, so its CLIP graph fails on any other query length
    dims = ({0: torch.export.Dim("batch", max=4096), 1: torch.export.Dim("tokens", min=2, max=int(positions))},)
    with torch.inference_mode(), warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        torch.onnx.export(tower.eval(), (ids,), str(_mkdir(folder) / "model.onnx"), input_names=["ids"],
                          output_names=["text_features"], dynamic_shapes=dims, dynamo=True, external_data=False)
    (folder / "tower.json").write_text(json.dumps(config))


def _mkdir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _clip_text_tower(model: Any) -> Any:
    import torch

    if getattr(model, "text_pool_type", None) != "argmax":
        raise RuntimeError(f"{type(model).__name__}: only argmax-pooled open_clip CLIP text towers are exported here")

    class ClipText(torch.nn.Module):
        """open_clip ``CLIP.encode_text`` over any length up to the context (it always runs all 77 positions)."""

        def __init__(self, clip: Any):
            super().__init__()
            self.clip = clip

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            m, n = self.clip, ids.shape[1]
            x = m.token_embedding(ids) + m.positional_embedding[:n]
            x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask[:n, :n]))
            x = x[torch.arange(x.shape[0]), ids.argmax(-1)]
            return m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) else x @ m.text_projection

    return ClipText(model)


def _fp16_weights(src: Path, dst: Path) -> None:
    """The same graph with its matrices stored as float16 and cast back on load: what the numpy export stores."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model, casts = onnx.load(str(src / "model.onnx")), []
    for init in model.graph.initializer:
        a = numpy_helper.to_array(init)
        if a.dtype == np.float32 and a.ndim == 2 and np.abs(a).max(initial=0) < 65504:
            name = init.name
            init.CopyFrom(numpy_helper.from_array(a.astype(np.float16), name + "_fp16"))
            casts.append(helper.make_node("Cast", [name + "_fp16"], [name], to=onnx.TensorProto.FLOAT))
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _save_beside(model, src, dst)


def _external_data(src: Path, dst: Path) -> None:
    """The same model with its tensors in ``model.onnx.data`` (ORT maps that file; one file is parsed and copied)."""
    import onnx

    _save_beside(onnx.load(str(src / "model.onnx")), src, dst, save_as_external_data=True, all_tensors_to_one_file=True,
                 location="model.onnx.data", size_threshold=1024)


def _save_beside(model: Any, src: Path, dst: Path, **save_args: Any) -> None:
    """Save ``model`` as ``dst/model.onnx`` with the tokenizer files of ``src``."""
    import shutil

    import onnx

    onnx.save(model, str(_mkdir(dst) / "model.onnx"), **save_args)
    for extra in src.iterdir():
        if extra.name != "model.onnx":
            shutil.copy(extra, dst / extra.name)


# ---- the runner ----

def _worker(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", *args], check=False, capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_tower(name: str, spec: str, root: Path, texts: list[str], runs: int, e2e_items: int) -> dict:
    import gc

    folder = root / name
    t = time.perf_counter()
    reference = export_all(spec, folder, texts)
    gc.collect()
    log(f"{name}: exported in {time.perf_counter() - t:.1f} s")
    out: dict[str, Any] = {"spec": spec, "variants": warm_and_agreement(folder, texts, reference)}
    store = None
    if e2e_items:
        store = root / f"store-{name}"
        _build_store(store, spec, e2e_items)
        out["e2e_mbm_search_numpy"] = {"items": e2e_items, "cold": []}
    load_before = os.getloadavg()
    for _ in range(runs):  # A B C ... A B C ...: a change of load hits every path alike
        for variant, row in out["variants"].items():
            t = time.perf_counter()
            phases = _worker(["cold", variant, str(folder)])
            row["cold"].append({"wall": time.perf_counter() - t, **phases})
        if store is not None:
            out["e2e_mbm_search_numpy"]["cold"].append(_mbm_search(store))
    out["loadavg_before_after_cold"] = [round(x, 2) for x in (*load_before, *os.getloadavg())]
    for row in [*out["variants"].values(), *([out["e2e_mbm_search_numpy"]] if store else [])]:
        row["cold_median"] = {k: round(_median([r.get(k, 0.0) for r in row["cold"]]), 4) for k in row["cold"][0]}
        if "mbm_import" in row["cold"][0]:
            row["cold_median"]["import_and_load"] = round(_median([r["mbm_import"] + r["encoder_import_load"] for r in row["cold"]]), 4)
        row["cold"] = [round(r["wall"], 3) for r in row["cold"]]
    return out


def warm_and_agreement(folder: Path, texts: list[str], reference: Any) -> dict:
    """Per variant: export size, cosine to torch and warm latency over ``texts`` (each in a new process without torch)."""
    import numpy as np

    (folder / "texts.json").write_text(json.dumps(texts))
    rows = {}
    for variant, (sub, threads, entries) in VARIANTS.items():
        warm = _worker(["warm", variant, str(folder), str(folder / "texts.json"), str(folder / f"{variant}.npy")])
        cos = (np.load(folder / f"{variant}.npy") * reference).sum(1)
        rows[variant] = {
            "threads": threads or "1 (BLAS limited for one query)", "export": sub, "session_config": entries,
            "size_mb": round(sum(p.stat().st_size for p in (folder / sub).iterdir()) / 1e6, 1),
            "cosine_to_torch": {"min": float(cos.min()), "mean": float(cos.mean()), "argmin_query": texts[int(cos.argmin())][:60]},
            "warm_ms_median": round(1e3 * _median(warm["seconds"]), 2),
            "warm_ms_p90": round(1e3 * float(np.percentile(warm["seconds"], 90)), 2), "cold": []}
    return rows


def _build_store(store: Path, spec: str, items: int) -> None:
    """A collection of ``items`` synthetic vectors with ``spec``'s query encoder, as cold_search.py builds it."""
    from cold_search import build_collection

    with contextlib.redirect_stdout(sys.stderr):
        build_collection(store, spec, items)


def _mbm_search(store: Path) -> dict:
    from _util import run_cli

    t = time.perf_counter()
    proc = run_cli(["search", COLD_QUERY, "--store", str(store), "--json", "-k", "10"], env={"HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"mbm search failed:\n{proc.stderr[-3000:]}")
    return {"wall": wall, **json.loads(proc.stdout)["seconds"]}


def _median(xs: list[float]) -> float:
    import statistics

    return float(statistics.median(xs))


def verdict(tower: dict) -> dict:
    numpy_cold = tower["variants"]["numpy"]["cold_median"]["wall"]
    for v in list(tower["variants"].values())[1:]:
        v["cold_ratio_to_numpy"] = round(v["cold_median"]["wall"] / numpy_cold, 3)
    ort = {k: v for k, v in tower["variants"].items() if k.startswith("ort")}
    best = min(ort, key=lambda k: ort[k]["cold_median"]["wall"])
    ok = ort[best]["cold_ratio_to_numpy"] <= MAX_RATIO and ort[best]["cosine_to_torch"]["min"] >= MIN_COSINE
    out = {"fastest_ort": best, "ratio": ort[best]["cold_ratio_to_numpy"], "switch": bool(ok)}
    if "e2e_mbm_search_numpy" in tower:  # the query encoder's share swapped for the ORT one's
        share = {k: v["cold_median"]["encoder_import_load"] + v["cold_median"]["encode"] for k, v in tower["variants"].items()}
        out["e2e_mbm_search_ort_estimate"] = round(tower["e2e_mbm_search_numpy"]["cold_median"]["wall"] - share["numpy"] + share[best], 3)
    return out


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=9, help="cold processes per path and tower, interleaved (default 9)")
    ap.add_argument("--towers", default=",".join(TOWERS), help=f"comma-separated subset of {','.join(TOWERS)}")
    ap.add_argument("--e2e-items", type=int, default=1000,
                    help="also time a cold `mbm search` (numpy path) on a collection of this many vectors with the bundled model; 0: skip")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, variant, folder, *rest = args.worker
        result = worker_cold(variant, Path(folder)) if kind == "cold" else worker_warm(
            variant, Path(folder), json.loads(Path(rest[0]).read_text()), Path(rest[1]))
        print(json.dumps(result))
        return
    import importlib.util

    missing = [m for m in ("onnxruntime", "onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        log(f"skipped: {' and '.join(missing)} not installed — `pip install onnxruntime onnx onnxscript` (onnxscript: torch.onnx's exporter) to run this benchmark")
        return
    sys.path.insert(0, str(Path(__file__).parent))
    import onnxruntime
    from _util import report

    os.environ["HF_HUB_OFFLINE"] = "1"
    texts, towers = queries(), {}
    with tempfile.TemporaryDirectory(prefix="mbm-onnx-bench-") as root:
        for name in args.towers.split(","):
            e2e = args.e2e_items if TOWERS[name] == "mbm-offline" else 0
            towers[name] = measure_tower(name, TOWERS[name], Path(root), texts, args.runs, e2e)
            towers[name]["verdict"] = verdict(towers[name])
    result = {"runs": args.runs, "queries": len(texts), "cold_query": COLD_QUERY, "onnxruntime": onnxruntime.__version__,
              "rule": f"switch when ORT cold <= {MAX_RATIO} x numpy cold and cosine to torch >= {MIN_COSINE}", "towers": towers}
    report("onnx_query_encoder", result, table_rows(towers, args.runs))


def table_rows(towers: dict, runs: int) -> list[tuple[str, str]]:
    rows = []
    for name, tower in towers.items():
        for variant, v in tower["variants"].items():
            c, cos = v["cold_median"], v["cosine_to_torch"]
            ratio = f" ({v['cold_ratio_to_numpy']:.2f}x)" if "cold_ratio_to_numpy" in v else ""
            cold = (f"cold {c['wall']:.3f} s{ratio}, import+load {c['import_and_load']:.3f} s (mbm {c['mbm_import']:.3f} "
                    f"+ tower {c['encoder_import_load']:.3f}), encode {1e3 * c['encode']:.1f} ms")
            rows.append((f"{name} {variant}", (f"{cold}; warm {v['warm_ms_median']:.1f} ms; "
                         f"cos min {cos['min']:.7f} mean {cos['mean']:.7f}; {v['size_mb']} MB")))
        vd, e2e = tower["verdict"], tower.get("e2e_mbm_search_numpy")
        if e2e:
            parts = ", ".join(f"{k} {v:.3f}" for k, v in e2e["cold_median"].items() if k != "wall")
            rows.append((f"{name} cold `mbm search`", (f"{e2e['cold_median']['wall']:.3f} s wall, numpy path ({e2e['items']} items; "
                         f"in-process {parts}); with {vd['fastest_ort']} est. {vd['e2e_mbm_search_ort_estimate']:.3f} s")))
        decision = "switch" if vd["switch"] else "keep numpy"
        rows.append((f"{name} verdict", (f"fastest ORT {vd['fastest_ort']} at {vd['ratio']:.2f}x numpy (median of {runs}): "
                     f"{decision}; load {tower['loadavg_before_after_cold']}")))
    return rows


if __name__ == "__main__":
    main()
