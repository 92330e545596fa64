"""Whether FAISS can search on this machine's GPUs: ``gpu_count()``, 0 without faiss-gpu or a CUDA device.

Having faiss-gpu and a GPU is not enough: a faiss-gpu build runs only on the GPU generations it was
compiled for, and on any other its first kernel fails an assertion that aborts the whole process (no
Python exception to catch). The faiss-gpu-cu12 wheels 1.9 to 1.14 carry machine code for compute
capability 7.0 and 8.0 only, no PTX: on a Hopper GPU (H100, H200; 9.0) they abort; 1.8.0.2 carries 9.0.
So the first call runs one tiny GPU search in a child process; if that dies, FAISS stays on the CPU
(embedding and training still use CUDA through torch) and a warning names the fix. The verdict is cached
in ``$XDG_CACHE_HOME/mbm/faiss-gpu.json`` per faiss build and visible GPU set, so a process pays the
probe (about a second) once per machine, not per search.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss

from mbm.atomic import write_text
from mbm.models.fingerprint import cache_path
from mbm.store.ann import ivf_of

log = logging.getLogger(__name__)

PROBE = (
    "import faiss, numpy as np\n"
    "x = np.eye(8, 16, dtype='float32')\n"
    "index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(16))\n"
    "index.add(x)\n"
    "assert (index.search(x, 1)[1][:, 0] == np.arange(8)).all()\n"
)


def cache_file() -> Path:
    return cache_path().parent / "faiss-gpu.json"  # beside mbm's other caches


def build_key() -> str:
    """The faiss build (its file and version) and the GPUs visible: what the probe's verdict holds for."""
    library = Path(faiss.__file__).resolve()
    return f"{faiss.__version__}:{library}:{library.stat().st_mtime_ns}:{os.environ.get('CUDA_VISIBLE_DEVICES', '')}"


def probe(timeout: float = 120.0) -> tuple[bool, str] | None:
    """One small search on the GPUs in a child process: (whether it worked, the child's last words); None when
    no verdict came (no Python to start, or it ran out of time: a driver compiling kernels on first use)."""
    try:
        done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("could not check faiss-gpu on this GPU (%s): FAISS runs on the CPU in this process", e)
        return None
    words = [line for line in (done.stderr or "").splitlines() if line.strip()]
    return done.returncode == 0, (words[-1] if words else f"exit status {done.returncode}")[-300:]


@functools.cache
def gpu_count() -> int:
    """GPUs FAISS can really search on (0 where it cannot: see the module docstring)."""
    n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if n == 0:
        return 0
    path, key = cache_file(), build_key()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    verdict = cached.get(key)
    if not isinstance(verdict, dict):
        found = probe()
        if found is None:
            return 0  # no verdict to keep: the next process asks again
        verdict = {"ok": found[0], "why": found[1]}
        try:
            write_text(path, json.dumps({**cached, key: verdict}) + "\n")
        except OSError:
            pass  # a read-only home: probe again next time
    if not verdict.get("ok"):
        log.warning(
            "faiss %s cannot search on this GPU (%s): FAISS runs on the CPU. Install a faiss-gpu build with kernels "
            "for this GPU (on H100/H200: faiss-gpu-cu12==1.8.0.2 with numpy<2, or faiss-gpu from conda-forge)",
            faiss.__version__,
            verdict.get("why", "its test search failed"),
        )
        return 0
    return n


@contextlib.contextmanager
def quantizer_on_gpu(index: Any) -> Iterator[None]:
    """While adding to an IVF index, assign vectors to their lists on the GPU (the coarse quantizer copied
    there; the lists and codes stay on the CPU index): on a GPU machine the assignment is most of an add."""
    ivf = ivf_of(index) if gpu_count() else None
    if ivf is None:
        yield
        return
    cpu_quantizer = ivf.quantizer
    try:
        gpu_quantizer = faiss.index_cpu_to_all_gpus(cpu_quantizer)
    except RuntimeError as e:
        log.warning("assigning IVF lists on the CPU: the quantizer cannot go to the GPU (%s)", e)
        yield
        return
    ivf.quantizer = gpu_quantizer
    try:
        yield
    finally:
        ivf.quantizer = cpu_quantizer  # the GPU copy is freed with gpu_quantizer; the saved index never sees it


def gpu_cloner_options(factory: str) -> Any:
    """Options for copying a ``factory`` index to the GPUs: float16 look-up tables for PQ codes (64-byte codes
    need more shared memory than float32 tables fit); flat and IVF-flat storage stays float32, exact."""
    options = faiss.GpuMultipleClonerOptions()
    options.useFloat16 = "PQ" in factory.upper()
    return options
