"""The text an image carries of its own: names, sidecar captions, XMP and IPTC keywords.

- names: the file name (without extension) and up to :data:`FOLDERS` parent folder names, split
  into words (``IMG_2019-07_beachTrip.jpg`` -> "IMG 2019 07 beach Trip");
- caption: a sidecar text file beside the image, ``photo.jpg.txt`` or ``photo.txt`` (the first
  :data:`MAX_CAPTION_CHARS` characters), plus XMP/IPTC descriptions, titles and headlines;
- keywords: XMP ``dc:subject`` and Lightroom's ``lr:hierarchicalSubject`` (split at ``|``), and IPTC
  keywords (2:25), from the image (XMP packets in JPEG APP1, PNG iTXt, WebP/TIFF; IPTC through
  Pillow's ``IptcImagePlugin``) and from sidecar ``photo.xmp`` / ``photo.jpg.xmp`` files.

Only headers are parsed (``Image.open`` never decodes pixels here); a file that cannot be read
gives an item text without that part, never an error. A text collection's items are their own
text. The catalog stores each item's text with a signature of what it was made from, so a run
reads again only items whose content, path or sidecar files changed (``refresh_item_text``).
"""

from __future__ import annotations

import logging
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from typing import Any

from mbm.store.catalog import Catalog
from mbm.store.keywords import ItemText, TextRow, has_text_tables, ids_at, set_texts, signatures

log = logging.getLogger(__name__)

FOLDERS = 3
MAX_CAPTION_CHARS = 2000
MAX_SIDECAR_BYTES = 256 * 1024
MAX_XMP_BYTES = 1024 * 1024
BATCH = 256
SIGNATURE_VERSION = "1"  # bump when the extraction changes: every item's text is made again

_NS = {
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "lr": "http://ns.adobe.com/lightroom/1.0/",
    "photoshop": "http://ns.adobe.com/photoshop/1.0/",
}
_KEYWORD_PROPS = ((_NS["dc"], "subject"), (_NS["lr"], "hierarchicalSubject"))
_CAPTION_PROPS = ((_NS["dc"], "title"), (_NS["dc"], "description"), (_NS["photoshop"], "Headline"))
_IPTC_KEYWORDS, _IPTC_CAPTION, _IPTC_HEADLINE, _IPTC_TITLE = (2, 25), (2, 120), (2, 105), (2, 5)
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z])")
_SEPARATORS = re.compile(r"[\W_]+", re.UNICODE)


def split_words(name: str) -> str:
    """``beachTrip_2019-07`` -> ``beach Trip 2019 07``."""
    return " ".join(w for part in _SEPARATORS.split(name) for w in _CAMEL.split(part) if w)


def names_text(path: str) -> str:
    folder, base = os.path.split(path)
    parents = []
    for _ in range(FOLDERS):
        folder, name = os.path.split(folder)
        if not name:
            break
        parents.append(name)
    return " ".join(split_words(x) for x in [os.path.splitext(base)[0], *reversed(parents)] if x)


def sidecar_paths(path: str) -> list[str]:
    """Sidecar files that may belong to ``path`` (existing or not), in the order they are read."""
    stem = os.path.splitext(path)[0]
    return [path + ".txt", stem + ".txt", path + ".xmp", stem + ".xmp", stem + ".XMP"]


def signature(path: str, content_hash: str) -> str:
    parts = [SIGNATURE_VERSION, content_hash, path]
    for side in sidecar_paths(path):
        try:
            st = os.stat(side)
        except OSError:
            continue
        parts.append(f"{os.path.basename(side)}:{st.st_size}:{st.st_mtime_ns}")
    return "\0".join(parts)


def _read_small(path: str, limit: int) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return None


def _text(raw: bytes | str) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _clean(text: str, limit: int = MAX_CAPTION_CHARS) -> str:
    return " ".join(text.replace("\x00", " ").split())[:limit]


def xmp_fields(packet: bytes | str) -> tuple[list[str], list[str]]:
    """``(captions, keywords)`` from an XMP packet; nothing when it is not well-formed XML."""
    data = packet.encode("utf-8") if isinstance(packet, str) else packet
    data = data[:MAX_XMP_BYTES].strip(b"\x00 \r\n\t")
    start = data.find(b"<x:xmpmeta")
    if start < 0:
        start = data.find(b"<rdf:RDF")
    if start > 0:
        end = data.rfind(b"</x:xmpmeta>")
        data = data[start : end + len(b"</x:xmpmeta>")] if end > start else data[start:]
    try:
        root = ET.fromstring(data)
    except ET.ParseError:
        return [], []
    captions: list[str] = []
    keywords: list[str] = []
    for desc in root.iter(f"{{{_NS['rdf']}}}Description"):
        for ns, prop in _CAPTION_PROPS:
            attr = desc.get(f"{{{ns}}}{prop}")
            if attr:
                captions.append(attr)
    for ns, prop in _CAPTION_PROPS:
        for el in root.iter(f"{{{ns}}}{prop}"):
            captions.extend(_values(el))
    for ns, prop in _KEYWORD_PROPS:
        for el in root.iter(f"{{{ns}}}{prop}"):
            for value in _values(el):
                keywords.extend(v.strip() for v in value.split("|") if v.strip())
    return _unique(captions), _unique(keywords)


def _values(el: Any) -> list[str]:
    items = [li.text for li in el.iter(f"{{{_NS['rdf']}}}li") if li.text and li.text.strip()]
    if items:
        return [x.strip() for x in items]
    return [el.text.strip()] if el.text and el.text.strip() else []


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v for v in (_clean(x, 500) for x in values) if v))


def embedded_metadata(path: str) -> tuple[list[str], list[str]]:
    """``(captions, keywords)`` from the image file's own XMP packet and IPTC record (headers only)."""
    from PIL import Image, IptcImagePlugin

    from mbm.indexer.decode import allowed_formats

    captions: list[str] = []
    keywords: list[str] = []
    try:
        with Image.open(path, formats=list(allowed_formats())) as img:
            packet = img.info.get("xmp") or img.info.get("XML:com.adobe.xmp")
            if packet is None and hasattr(img, "tag_v2"):
                packet = img.tag_v2.get(700)  # TIFF's XMP tag
            if packet:
                captions, keywords = xmp_fields(packet)
            iptc = IptcImagePlugin.getiptcinfo(img) or {}
    except Exception as e:  # noqa: BLE001 - metadata is optional: an odd header never stops a run
        log.debug("no embedded metadata from %s (%s)", path, e)
        return captions, keywords
    for key, into in ((_IPTC_TITLE, captions), (_IPTC_HEADLINE, captions), (_IPTC_CAPTION, captions)):
        into.extend(_iptc_values(iptc.get(key)))
    keywords.extend(_iptc_values(iptc.get(_IPTC_KEYWORDS)))
    return _unique(captions), _unique(keywords)


def _iptc_values(value: Any) -> list[str]:
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    return [_text(v) for v in values if isinstance(v, (bytes, str))]


def item_text(path: str) -> ItemText:
    """The names, caption and keywords of the image at ``path`` (see the module docstring)."""
    captions: list[str] = []
    keywords: list[str] = []
    for side in sidecar_paths(path):
        raw = _read_small(side, MAX_SIDECAR_BYTES)
        if raw is None:
            continue
        if side.lower().endswith(".txt"):
            captions.append(_clean(_text(raw)))
        else:
            c, k = xmp_fields(raw)
            captions += c
            keywords += k
    c, k = embedded_metadata(path)
    captions += c
    keywords += k
    return ItemText(names_text(path), _clean(" ".join(_unique(captions))), ", ".join(_unique(keywords)))


def _ids_under(catalog: Catalog, roots: Sequence[str]) -> list[int]:
    ids: set[int] = set()
    for root in roots:
        if os.path.isdir(root):
            ids.update(int(i) for i in catalog.ids_under(root))
        else:
            ids.update(ids_at(catalog, root))
    return sorted(ids)


def refresh_item_text(catalog: Catalog, roots: Sequence[str]) -> int:
    """Make the item text of the items under ``roots`` whose content, path or sidecars changed; returns how many."""
    if catalog.readonly or not has_text_tables(catalog):
        return 0
    texts = catalog.meta().get("kind") == "text"
    ids = _ids_under(catalog, roots)
    done = 0
    for start in range(0, len(ids), 4 * BATCH):
        chunk = ids[start : start + 4 * BATCH]
        rows = catalog.rows(chunk)
        known = signatures(catalog, chunk)
        todo: list[TextRow] = []
        for item_id in chunk:
            row = rows.get(item_id)
            if row is None:
                continue
            sig = row["hash"] if texts else signature(row["path"], row["hash"])
            if known.get(item_id) == sig:
                continue
            text = ItemText("", _clean(row["text"] or ""), "") if texts else item_text(row["path"])
            todo.append(TextRow(item_id, row["hash"], sig, text))
            if len(todo) >= BATCH:
                done += set_texts(catalog, todo)
                todo = []
        done += set_texts(catalog, todo)
    if done:
        log.info("item text made for %d items", done)
    return done
