"""Reading the npm package ``@iconify/json`` (a .tgz or its unpacked folder) and the optional emojilib keywords."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

from .. import emoji as emoji_src
from ..common import SourceMissing
from .names import cp_key

PACKAGE = "@iconify/json@2.2.535"

HOW_TO_GET = (
    f"get it with `npm pack {PACKAGE}` (one 104 MB .tgz) and pass the .tgz or its "
    "unpacked package/ folder: --iconify PATH (Python: roots={'iconify': PATH})"
)

EMOJILIB_HOW = "`npm pack emojilib@4.0.3`, unpack, pass the package/ folder as --emojilib PATH"


class IconifyPackage:
    """Read ``json/<prefix>.json`` from an unpacked package folder or the npm .tgz."""

    def __init__(self, path: Path):
        path = Path(path)
        self.path = path
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        self.folder: Path | None = None  # an unpacked package's json/ folder (None: read from the .tgz)
        if path.is_file() and (path.name.endswith((".tgz", ".tar.gz", ".tar"))):
            self._tar = tarfile.open(path, "r:*")
            for m in self._tar.getmembers():
                hit = re.search(r"(?:^|/)json/([^/]+)\.json$", m.name)
                if hit and m.isfile():
                    self._members[hit.group(1)] = m
        else:
            folder = path / "json" if (path / "json").is_dir() else path
            if not folder.is_dir():
                raise SourceMissing(f"Iconify package not found at {path} — {HOW_TO_GET}")
            self.folder = folder
        if not self.prefixes():
            raise SourceMissing(f"no icon sets (json/<prefix>.json) found in {path} — {HOW_TO_GET}")
        self.version = self._version()

    def prefixes(self) -> list[str]:
        if self.folder is not None:
            return sorted(
                p.stem for p in self.folder.glob("*.json") if p.stem not in ("collections", "package", "composer")
            )
        return sorted(self._members)

    def load(self, prefix: str) -> dict | None:
        if self.folder is not None:
            p = self.folder / f"{prefix}.json"
            return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
        m = self._members.get(prefix)
        if m is None:
            return None
        return json.loads(self._read(m).decode("utf-8"))

    def _read(self, member: tarfile.TarInfo) -> bytes:
        """The bytes of one file inside the .tgz."""
        assert self._tar is not None  # only a package read from a .tgz has members
        f = self._tar.extractfile(member)
        if f is None:
            raise OSError(f"{member.name} in {self.path} is not a regular file")
        return f.read()

    def _version(self) -> str | None:
        try:
            if self.folder is not None:
                pj = self.folder.parent / "package.json"
                data = json.loads(pj.read_text()) if pj.is_file() else {}
            else:
                assert self._tar is not None
                m = next(
                    (m for m in self._tar.getmembers() if m.name.endswith("package.json") and m.name.count("/") <= 1),
                    None,
                )
                data = json.loads(self._read(m)) if m else {}
            return data.get("version")
        except (OSError, ValueError, KeyError):
            return None


def load_emojilib(path: Path | None) -> dict[str, list[str]]:
    """emojilib's ``emoji -> keywords`` keyed by base codepoints ("1f697"); {} when absent."""
    if path is None:
        return {}
    path = Path(path)
    for cand in (path, path / "dist" / "emoji-en-US.json", path / "package" / "dist" / "emoji-en-US.json"):
        if cand.is_file():
            data = json.loads(cand.read_text(encoding="utf-8"))
            return {cp_key(emoji_src.base_codepoints(e)): list(k) for e, k in data.items()}
    raise SourceMissing(f"emojilib (dist/emoji-en-US.json) not found under {path} — {EMOJILIB_HOW}")
