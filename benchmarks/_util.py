"""Shared helpers for the benchmark scripts: synthetic photo-like corpora and reporting."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

RESULTS = Path(__file__).parent / "results"


def photo_like(seed: int, size: tuple[int, int] = (3000, 2000)) -> Image.Image:
    """Smooth gradients, shapes, blur and sensor-like noise: JPEG-compresses like a photo (~1-2 MB at q90)."""
    rng = np.random.default_rng(seed)
    w, h = size
    small = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(h // 20, h // 4))
        draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    img = img.filter(ImageFilter.GaussianBlur(3))
    noise = rng.normal(0, 6, (h, w, 1)).astype(np.int16)
    return Image.fromarray(np.clip(np.asarray(img, np.int16) + noise, 0, 255).astype(np.uint8))


def make_photo_folder(folder: Path, n: int, size: tuple[int, int] = (3000, 2000)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"photo_{i:05d}.jpg"
        if not p.exists():
            photo_like(i, size).save(p, "JPEG", quality=90)
        paths.append(p)
    return paths


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def model_only(encoder: Any, batch: int, n_batches: int) -> float:
    """Images/s of ``encoder.encode_image_tensors`` on a fixed random batch (median of ``n_batches``, after a
    warm-up that also pays any one-time export)."""
    import time

    import torch

    pixels = torch.randn(batch, 3, encoder.image_size, encoder.image_size)
    encoder.encode_image_tensors(pixels)
    times = []
    for _ in range(n_batches):
        t0 = time.perf_counter()
        encoder.encode_image_tensors(pixels)
        times.append(time.perf_counter() - t0)
    return batch / median(times)


def report(name: str, result: dict[str, Any], rows: list[tuple[str, str]]) -> None:
    """Print a table to stderr and the JSON to stdout; keep a copy under benchmarks/results/."""
    result = {"benchmark": name, "machine": machine(), **result}
    width = max(len(k) for k, _ in rows)
    print(f"\n{name}", file=sys.stderr)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}", file=sys.stderr)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def run_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("mbm")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env={**os.environ, **(env or {})})
