"""Iconify (npm ``@iconify/json``): emoji in nine more styles and pictograms from ~30 icon sets.

The all-in-one package holds one ``json/<prefix>.json`` per icon set: SVG ``body`` per icon,
set-level ``width``/``height``, ``info`` (name, author, ``license.spdx``), optional ``chars``
(codepoint -> icon name), ``categories`` and ``suffixes`` (style variants). It is not a
Debian package: get it with ``npm pack @iconify/json@2.2.535`` and pass the ``.tgz`` (or the
unpacked ``package/`` folder) as ``--iconify PATH``. ``--emojilib PATH`` (npm ``emojilib``,
optional) adds emoji keywords.

Two kinds of rows, all with ``source = "iconify"`` and ``style = <set prefix>``:

- **Emoji** from :data:`EMOJI_SETS`, joined to the emoji concept of the PyPI ``emoji``
  package by codepoint (the set's ``chars``, or a sibling set's, or a name that is a
  codepoint sequence) or else by CLDR name; the row's ``group`` is the Noto source's
  (``emoji:1f697``), so one concept lands in one split in every style. Skin-tone variants
  are skipped (the base stands for them).
- **Pictograms** from :data:`PICTOGRAM_SETS`: the icon name is the concept ("fire-truck" ->
  "fire truck") after style suffixes are collapsed; UI and abstract names are dropped
  (:func:`pictogram_concept`). ``group = "pictogram:<concept>"`` across sets.

Only sets whose licence passes :data:`LICENCE_POLICY` are read (see the table below); every
row records the licence of its artwork, and :func:`write_attribution` lists the CC-BY sets.
Rendering uses resvg-py in worker processes with a per-icon timeout, cached by content hash.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import re
import tarfile
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_conns
from pathlib import Path

from PIL import Image

from mbm.atomic import write_text

from . import emoji as emoji_src
from .common import SourceMissing, article, is_blank, pad_square, split_words

PACKAGE = "@iconify/json@2.2.535"
HOW_TO_GET = (
    f"get it with `npm pack {PACKAGE}` (one 104 MB .tgz) and pass the .tgz or its "
    "unpacked package/ folder: --iconify PATH (Python: roots={'iconify': PATH})"
)
EMOJILIB_HOW = "`npm pack emojilib@4.0.3`, unpack, pass the package/ folder as --emojilib PATH"
ATTRIBUTION = "ATTRIBUTION.md"

# ================================================================ licence table
# Iconify's declared ``info.license.spdx`` -> may the set be used? Anything not listed is
# refused. CC-BY sets need attribution (ATTRIBUTION.md). Never: CC-BY-SA, GPL/LGPL/MPL
# copyleft, non-commercial (NC), or unknown licences.
LICENCE_POLICY: dict[str, str] = {
    "CC0-1.0": "use",
    "Unlicense": "use",  # public domain
    "MIT": "use",
    "ISC": "use",
    "Apache-2.0": "use",
    "BSD-2-Clause": "use",
    "BSD-3-Clause": "use",
    "OFL-1.1": "use",
    "CC-BY-3.0": "use + attribute",
    "CC-BY-4.0": "use + attribute",
    # listed for clarity: refused
    "CC-BY-SA-3.0": "refuse",
    "CC-BY-SA-4.0": "refuse",
    "CC-BY-NC-4.0": "refuse",
    "CC-BY-NC-SA-4.0": "refuse",
    "GPL-2.0-only": "refuse",
    "GPL-2.0-or-later": "refuse",
    "GPL-3.0": "refuse",
    "GPL-3.0-or-later": "refuse",
    "MPL-2.0": "refuse",
}
# Known cases where the licence of the *artwork* differs from what Iconify declares: the
# override is what rows record (and what the policy above is applied to).
ARTWORK_LICENCE_OVERRIDES: dict[str, dict[str, str]] = {
    "fxemoji": {
        "spdx": "CC-BY-4.0",
        "url": "https://creativecommons.org/licenses/by/4.0/",
        "why": "Mozilla's FxEmoji artwork is CC BY 4.0; the Apache-2.0 that Iconify "
        "lists covers the code only (upstream LICENSE.md)",
    },
}
REFUSED_SETS = {"emojione-v1": "CC-BY-SA-4.0 (evaluation only, never training data)"}


def set_licence(prefix: str, info: dict) -> tuple[str | None, str]:
    """(licence recorded on rows, or None when refused; the policy applied) for one set."""
    if prefix in REFUSED_SETS:
        return None, "refuse"
    spdx = ARTWORK_LICENCE_OVERRIDES.get(prefix, {}).get("spdx") or (info.get("license") or {}).get("spdx") or ""
    policy = LICENCE_POLICY.get(spdx, "refuse")
    return (spdx if policy != "refuse" else None), policy


def needs_attribution(licence: str) -> bool:
    return LICENCE_POLICY.get(licence) == "use + attribute"


# ================================================================ which sets
EMOJI_SETS = (
    "twemoji",
    "noto-v1",
    "fluent-emoji-flat",
    "fluent-emoji",
    "fluent-emoji-high-contrast",
    "emojione",
    "emojione-monotone",
    "fxemoji",
    "streamline-emojis",
)
# pictogram sets with descriptive English names (order = priority when the overall cap bites)
PICTOGRAM_SETS = (
    "game-icons",
    "mdi",
    "tabler",
    "lucide",
    "ph",
    "healthicons",
    "maki",
    "temaki",
    "material-symbols",
    "carbon",
    "icon-park-outline",
    "icon-park",
    "fluent",
    "hugeicons",
    "fa6-solid",
    "flat-color-icons",
    "fluent-color",
    "pinhead",
    "streamline",
    "streamline-color",
    "streamline-flex",
    "streamline-flex-color",
    "streamline-plump",
    "streamline-plump-color",
    "streamline-sharp-color",
    "streamline-ultimate",
    "streamline-ultimate-color",
    "streamline-freehand",
    "streamline-freehand-color",
    "streamline-kameleon-color",
    "streamline-stickies-color",
)
# which variant stands for a concept when a set draws it several ways (first match wins;
# "" = the unsuffixed name); otherwise the shortest name is taken
VARIANT_PREFERENCE = {
    "fluent": ("24-regular", "20-regular", "28-regular", "32-regular", "48-regular", "16-regular"),
}
DEFAULT_SET_CAP = 2500  # icons per pictogram set (emoji sets: all)
DEFAULT_TOTAL_CAP = 38000  # iconify rows in all, emoji first
DEFAULT_WORKERS = 2
TIMEOUT_S = 20.0  # per icon; a renderer that takes longer is killed
MARGIN = 0.06  # as the Noto/Symbola emoji
DEFAULT_VIEWBOX = 16  # Iconify's default width/height
# mono sets draw with currentColor: mostly black, some dark colours (chosen per icon by hash)
DARK_COLOURS = ("#000000",) * 7 + ("#1f2a44", "#5a1a1a", "#1b4332", "#3b2a1a", "#333333")


# ================================================================ reading the package


class IconifyPackage:
    """Read ``json/<prefix>.json`` from an unpacked package folder or the npm .tgz."""

    def __init__(self, path: Path):
        path = Path(path)
        self.path = path
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        if path.is_file() and (path.name.endswith((".tgz", ".tar.gz", ".tar"))):
            self._tar = tarfile.open(path, "r:*")
            for m in self._tar.getmembers():
                hit = re.search(r"(?:^|/)json/([^/]+)\.json$", m.name)
                if hit and m.isfile():
                    self._members[hit.group(1)] = m
            self.folder = None
        else:
            folder = path / "json" if (path / "json").is_dir() else path
            if not folder.is_dir():
                raise SourceMissing(f"Iconify package not found at {path} — {HOW_TO_GET}")
            self.folder = folder
        if not self.prefixes():
            raise SourceMissing(f"no icon sets (json/<prefix>.json) found in {path} — {HOW_TO_GET}")
        self.version = self._version()

    def prefixes(self) -> list[str]:
        if self._tar is not None:
            return sorted(self._members)
        return sorted(
            p.stem for p in self.folder.glob("*.json") if p.stem not in ("collections", "package", "composer")
        )

    def load(self, prefix: str) -> dict | None:
        if self._tar is not None:
            m = self._members.get(prefix)
            if m is None:
                return None
            return json.loads(self._tar.extractfile(m).read().decode("utf-8"))
        p = self.folder / f"{prefix}.json"
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None

    def _version(self) -> str | None:
        try:
            if self._tar is not None:
                m = next(
                    (m for m in self._tar.getmembers() if m.name.endswith("package.json") and m.name.count("/") <= 1),
                    None,
                )
                data = json.loads(self._tar.extractfile(m).read()) if m else {}
            else:
                pj = self.folder.parent / "package.json"
                data = json.loads(pj.read_text()) if pj.is_file() else {}
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


# ================================================================ SVG


@dataclass
class Icon:
    prefix: str
    name: str
    svg: str
    licence: str
    kind: str  # "emoji" | "pictogram"
    captions: list[str]
    group: str
    label: str | None = None
    colour: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return content_key(self.svg)


def icon_svg(icon: dict, iconset: dict) -> tuple[str, bool]:
    """The standalone SVG of one icon; (svg, uses currentColor).

    viewBox = icon's (else the set's) left/top/width/height, default 0 0 16 16; transforms
    (rotate/hFlip/vFlip) are only found on aliases, which are not used. The pixel size is
    set at render time (:func:`render_svg`).
    """
    left = icon.get("left", iconset.get("left", 0))
    top = icon.get("top", iconset.get("top", 0))
    w = icon.get("width", iconset.get("width", DEFAULT_VIEWBOX)) or DEFAULT_VIEWBOX
    h = icon.get("height", iconset.get("height", DEFAULT_VIEWBOX)) or DEFAULT_VIEWBOX
    body = icon["body"]
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'viewBox="{left} {top} {w} {h}" width="{w}" height="{h}">{body}</svg>'
    )
    return svg, "currentColor" in body


_ROOT_BOX = re.compile(r'viewBox="([^"]*)" width="[^"]*" height="[^"]*"')
PROBE_PX = 64  # a small first render finds the drawing's extent


def _with_box(svg: str, box: tuple[float, float, float, float], wpx: int, hpx: int) -> str:
    left, top, w, h = box
    return _ROOT_BOX.sub(f'viewBox="{left:.6g} {top:.6g} {w:.6g} {h:.6g}" width="{wpx}" height="{hpx}"', svg, count=1)


def _resvg(svg: str) -> Image.Image:
    import resvg_py

    png = resvg_py.svg_to_bytes(svg_string=svg, background="#ffffff", skip_system_fonts=True)
    img = Image.open(io.BytesIO(bytes(png)))
    img.load()
    return img.convert("RGB")


def render_svg(svg: str, size: int, margin: float = MARGIN) -> Image.Image | None:
    """resvg-py: SVG text -> RGB ``size`` square on white, the drawing centred with ``margin``;
    None when it renders blank. Raises ValueError on a bad SVG.

    Two renders: a 64 px probe finds the drawing's bounding box, then the viewBox is set to a
    square around it and the icon is drawn once at the final size (crisp, no resampling).
    """
    m = _ROOT_BOX.search(svg)
    left, top, w, h = (float(v) for v in m.group(1).split())
    scale = PROBE_PX / max(w, h)
    probe = _resvg(_with_box(svg, (left, top, w, h), max(1, round(w * scale)), max(1, round(h * scale))))
    box = crop_box(probe)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    x0, y0, x1, y1 = (max(0, x0 - 1), max(0, y0 - 1), min(probe.width, x1 + 1), min(probe.height, y1 + 1))
    bw, bh = (x1 - x0) / scale, (y1 - y0) / scale
    cx, cy = left + (x0 + x1) / 2 / scale, top + (y0 + y1) / 2 / scale
    side = max(bw, bh) / (1 - 2 * margin)
    img = _resvg(_with_box(svg, (cx - side / 2, cy - side / 2, side, side), size, size))
    if img.size != (size, size):
        img = pad_square(img, size)
    return None if is_blank(img) else img


def crop_box(img: Image.Image, threshold: int = 250) -> tuple[int, int, int, int] | None:
    return img.convert("L").point(lambda v: 255 if v < threshold else 0).getbbox()


def pick_colour(prefix: str, name: str) -> str:
    """A dark colour for currentColor, fixed per icon (black for 7 icons in 12)."""
    h = int(hashlib.sha256(f"{prefix}/{name}".encode()).hexdigest()[:8], 16)
    return DARK_COLOURS[h % len(DARK_COLOURS)]


def content_key(svg: str) -> str:
    return hashlib.sha256(svg.encode("utf-8")).hexdigest()


# ================================================================ emoji join


def cp_key(cps: Iterable[int]) -> str:
    return "-".join(f"{cp:x}" for cp in cps if cp not in emoji_src.SELECTORS)


def slug(text: str) -> str:
    """ "Côte d’Ivoire" -> "cote-divoire"; ":red_car:" -> "red-car" (Iconify's name style)."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = re.sub(r"[’'`\".]", "", text.lower().strip(":"))
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


_SKIN_NAME = re.compile(r"-(?:(?:medium-)?(?:light|dark)|medium)(?:-skin-tone)?$|-skin-tone(?:-\d)?$")
_CP_NAME = re.compile(r"^(?:u|emoji-u)?([0-9a-f]{4,6}(?:[-_][0-9a-f]{4,6})*)$")


class EmojiIndex:
    """Fully-qualified emoji of the ``emoji`` package, looked up by codepoints or by name."""

    def __init__(self):
        self.data = dict(emoji_src.concepts())
        self.by_cps: dict[str, str] = {}
        self.by_slug: dict[str, str] = {}
        for text, d in self.data.items():
            if emoji_src.has_skin_tone(text):
                continue
            self.by_cps.setdefault(cp_key(ord(c) for c in text), text)
            for nm in [d["en"], *d.get("alias", [])]:
                s = slug(nm)
                for variant in {s, s.replace("-", "")} | (
                    {f"flag-{s}", f"flag{s.replace('-', '')}"} if emoji_src.is_flag(text) else set()
                ):
                    self.by_slug.setdefault(variant, text)

    def lookup(self, name: str, cps: str | None) -> tuple[str | None, str]:
        """(emoji text or None, how: "chars"/"name-codepoints"/"cldr-name"/"skin-tone"/"unknown")."""
        if cps is None:
            m = _CP_NAME.match(name)
            if m:
                cps = m.group(1).replace("_", "-")
        if cps is not None:
            seq = [int(x, 16) for x in cps.split("-") if x]
            if any(cp in emoji_src.SKIN_TONES for cp in seq):
                return None, "skin-tone"
            text = self.by_cps.get(cp_key(seq))
            if text is not None:
                return text, "codepoint"
        for cand in (name, re.sub(r"-\d+$", "", name), name.replace("-", "")):
            text = self.by_slug.get(cand)
            if text is not None:
                return text, "cldr-name"
        if _SKIN_NAME.search(name) and self.by_slug.get(_SKIN_NAME.sub("", name)):
            return None, "skin-tone"
        return None, "unknown"


def emoji_captions(text: str, data: dict, keywords: list[str]) -> list[str]:
    """emoji.py's captions plus one "name, keyword, keyword, ..." caption from emojilib.

    The keywords are joined into one caption: as captions of their own, shared words
    ("face", "happy") would link hundreds of emoji into one split component.
    """
    caps = emoji_src.captions(text, data)
    names_lc = {c.lower() for c in caps}
    extra = []
    for kw in keywords[1:]:  # the first keyword is the emoji's own slug name
        kw = kw.replace("_", " ").strip().lower()
        if re.search(r"[a-z]{2}", kw) and kw not in names_lc and kw not in extra:
            extra.append(kw)
    if extra:
        caps.append(_cap(", ".join([caps[0], *extra])))
    return caps


def _cap(text: str, limit: int = 200) -> str:
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(",", 1)[0].rstrip(" ,")


# ================================================================ pictogram names

# last tokens that name a drawing style, not a concept: "-outline", "-filled", "-bold" ...
STYLE_TOKENS = frozenset(
    """
outline outlined filled fill solid bold line lines light thin duotone duo regular rounded round
sharp flat remix twotone negative alt glyph color colored colour mini micro small large sm lg
o 24px 16px 32px 48px
""".split()
)
# a token anywhere in the name marks a variant or badge of another icon ("camera-off")
MODIFIER_TOKENS = frozenset(
    """
off slash plus minus add remove check checked checkmark x xmark cancel alert question edit sync
search lock unlock settings cog dismiss error warning disabled exclamation star-off new
""".split()
)
# UI, layout, typography, abstract shapes and marks: not objects one would search a picture for
UI_TOKENS = frozenset(
    """
arrow arrows chevron chevrons caret carets align alignment format text font fonts typography
numeric number numbers letter letters alpha alphabet abc layout grid border borders sidebar panel
menu button toggle checkbox radio scroll zoom cursor pointer select selection sort filter list
indent outdent paragraph heading subscript superscript italic underline strikethrough margin
padding spacing resize crop rotate flip undo redo refresh reload upload download share export
import login logout link unlink code api database server file files folder folders document
documents doc docs page pages chart charts graph diagram analytics logo logos brand circle square
rectangle triangle hexagon pentagon octagon polygon shape shapes dot dots equal divide percent hash
hashtag math function variable angle expand collapse maximize minimize fullscreen exit enter
close delete app apps application dashboard widget widgets view preview wifi signal network
notification notifications badge account interface layer layers frame column columns row rows
cell cells split merge spreadsheet subtitle subtitles caption play pause skip forward backward
rewind repeat shuffle volume mute css html json sql pdf xml vector bezier path node nodes mode
status state setting user users profile id login sign signin signout password qr barcode
data form input output message messages chat comment comments inbox outbox mail email send
reply sent archive box-off clipboard copy paste cut window windows tab tabs screen display
monitor-off cast sidebar toolbar bullet bullets quote quotes emoji emoticon smiley
left right up down top bottom center middle horizontal vertical north south east west
next previous back first last start end begin stop record step skip ab ascending descending
pin unpin sum minus multiply infinity pi sigma function fx variable binary hex
""".split()
)
# brands and products: Iconify sets carry many logos
BRAND_TOKENS = frozenset(
    """
facebook twitter google microsoft android linux github gitlab youtube instagram whatsapp amazon
spotify slack discord reddit linkedin pinterest tiktok snapchat dropbox paypal bitcoin ethereum
npm docker kubernetes aws azure firefox chrome safari opera ubuntu debian steam xbox playstation
nintendo netflix twitch telegram skype wechat yelp uber airbnb ebay etsy figma adobe jira trello
wordpress drupal react vue angular python javascript typescript php npm yarn webpack vscode
visa mastercard stripe medium patreon tumblr vimeo flickr soundcloud deezer bandcamp
""".split()
)
MAX_TOKENS = 4


def strip_variant(name: str, suffixes: Iterable[str] = ()) -> str:
    """The concept part of an icon name: the set's declared style suffix, style words and
    trailing numbers removed ("airplane-24-regular" -> "airplane", "fire-truck-2" -> "fire-truck")."""
    for suf in sorted((s for s in suffixes if s), key=len, reverse=True):
        if name.endswith("-" + suf) and len(name) > len(suf) + 1:
            name = name[: -len(suf) - 1]
            break
    tokens = name.split("-")
    while len(tokens) > 1 and (
        tokens[-1] in STYLE_TOKENS or tokens[-1].isdigit() or re.fullmatch(r"\d+px|x\d+|v\d+", tokens[-1])
    ):
        tokens.pop()
    return "-".join(tokens)


def pictogram_concept(name: str, suffixes: Iterable[str] = ()) -> str | None:
    """ "fire-truck-outline" -> "fire truck"; None for UI/abstract/brand/variant names.

    Dropped: names with a modifier token ("-off", "-plus", "-check": badges on another
    icon), a UI/layout/typography/shape word (:data:`UI_TOKENS`), a brand, any number,
    a token of one or two letters only (letters, "ab"), or more than four words.
    """
    base = strip_variant(name, suffixes)
    tokens = base.split("-")
    if not tokens or len(tokens) > MAX_TOKENS:
        return None
    for t in tokens:
        if (
            t in MODIFIER_TOKENS
            or t in UI_TOKENS
            or t in BRAND_TOKENS
            or any(ch.isdigit() for ch in t)
            or len(t) <= 2
            or not t.isascii()
        ):
            return None
    return " ".join(tokens)


def pictogram_captions(concept: str, category: str | None) -> list[str]:
    """["fire truck", "fire truck, vehicles", "an icon of a fire truck"] (no category: two)."""
    caps = [concept]
    if category and normalize_category(category) != concept:
        caps.append(f"{concept}, {normalize_category(category)}")
    caps.append(f"an icon of {article(concept)} {concept}")
    return caps


def normalize_category(cat: str) -> str:
    return re.sub(r"\s+", " ", split_words(cat).replace("&", "and").replace("/", " and ").lower()).strip()


# ================================================================ choosing icons


def _visible(iconset: dict) -> list[tuple[str, dict]]:
    return sorted(
        (n, ic)
        for n, ic in iconset.get("icons", {}).items()
        if not ic.get("hidden") and isinstance(ic.get("body"), str)
    )


def emoji_icons(
    prefix: str,
    iconset: dict,
    licence: str,
    index: EmojiIndex,
    emojilib: dict,
    shared_chars: dict[str, str],
    size: int,
    report: Counter,
) -> list[Icon]:
    """One Icon per emoji concept of an emoji set (skin tones skipped, unknown names counted)."""
    chars = {name: cps for cps, name in sorted(iconset.get("chars", {}).items())}
    best: dict[str, tuple[tuple, Icon]] = {}
    for name, ic in _visible(iconset):
        cps = chars.get(name) or shared_chars.get(name)
        text, how = index.lookup(name, cps)
        if text is None:
            if how == "skin-tone":
                continue  # the base emoji stands for its variants (not a drop)
            report[f"iconify: {prefix}: name matches no emoji concept"] += 1
            continue
        svg, mono = icon_svg(ic, iconset)
        colour = None
        if mono:
            colour = pick_colour(prefix, name)
            svg = svg.replace("currentColor", colour)
        data = index.data[text]
        icon = Icon(
            prefix,
            name,
            svg,
            licence,
            "emoji",
            emoji_captions(text, data, emojilib.get(cp_key(ord(c) for c in text), [])),
            emoji_src.group_id(text),
            colour=colour,
            extra={"emoji": text, "join": how},
        )
        rank = (how != "codepoint", len(name), name)
        g = icon.group
        if g not in best or rank < best[g][0]:
            if g in best:
                report[f"iconify: {prefix}: second icon for one emoji concept"] += 1
            best[g] = (rank, icon)
        else:
            report[f"iconify: {prefix}: second icon for one emoji concept"] += 1
    return [icon for _, icon in sorted(best.values(), key=lambda x: x[1].name)]


def pictogram_candidates(prefix: str, iconset: dict, report: Counter) -> dict[str, tuple[str, dict, str | None]]:
    """concept -> (icon name, icon, category) for one set: one variant per concept."""
    suffixes = list((iconset.get("suffixes") or {}).keys())
    prefer = VARIANT_PREFERENCE.get(prefix, ())
    category_of: dict[str, str] = {}
    for cat, names in sorted((iconset.get("categories") or {}).items()):
        for n in names:
            category_of.setdefault(n, cat)
    chosen: dict[str, tuple[tuple, str, dict]] = {}
    for name, ic in _visible(iconset):
        concept = pictogram_concept(name, suffixes)
        if concept is None:
            report["iconify: pictogram name is UI/abstract/brand/variant (stoplist)"] += 1
            continue
        pref = next((i for i, s in enumerate(prefer) if name.endswith("-" + s)), len(prefer))
        rank = (name.replace("-", " ") != concept, pref, len(name), name)
        if concept not in chosen or rank < chosen[concept][0]:
            chosen[concept] = (rank, name, ic)
    return {c: (name, ic, category_of.get(name)) for c, (_, name, ic) in chosen.items()}


def _stable(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def water_fill(sizes: dict[str, int], budget: int) -> dict[str, int]:
    """Per-set quotas summing to at most ``budget``: small sets keep all, big ones share the rest."""
    if sum(sizes.values()) <= budget:
        return dict(sizes)
    lo, hi = 0, max(sizes.values())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(n, mid) for n in sizes.values()) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return {k: min(n, lo) for k, n in sizes.items()}


def select_icons(
    pkg: IconifyPackage,
    *,
    size: int,
    emojilib: dict,
    set_cap: int | None,
    total_cap: int | None,
    emoji_cap: int | None = None,
    emoji_sets: Iterable[str] = EMOJI_SETS,
    pictogram_sets: Iterable[str] = PICTOGRAM_SETS,
    report: Counter,
    sets_info: dict,
    log: Callable[[str], object],
) -> list[Icon]:
    """Every icon to render, emoji first, caps applied; ``sets_info`` gets each set's info."""
    index = EmojiIndex()
    available = set(pkg.prefixes())
    icons: list[Icon] = []
    loaded: dict[str, tuple[dict, str]] = {}

    def load(prefix: str) -> tuple[dict, str] | None:
        if prefix not in available:
            report[f"iconify: set {prefix} not in the package"] += 1
            return None
        data = pkg.load(prefix)
        info = data.get("info") or {}
        licence, policy = set_licence(prefix, info)
        declared = (info.get("license") or {}).get("spdx")
        sets_info[prefix] = {
            "name": info.get("name", prefix),
            "author": info.get("author") or {},
            "declared_licence": declared,
            "licence": licence,
            "policy": policy,
            "licence_url": ARTWORK_LICENCE_OVERRIDES.get(prefix, {}).get("url")
            or (info.get("license") or {}).get("url"),
            "override": ARTWORK_LICENCE_OVERRIDES.get(prefix, {}).get("why"),
        }
        if licence is None:
            report[f"iconify: set {prefix} refused: licence {declared or 'unknown'}"] += 1
            log(f"iconify: {prefix}: refused (licence {declared or 'unknown'})")
            return None
        return data, licence

    emoji_sets = [p for p in emoji_sets]
    for prefix in emoji_sets:
        got = load(prefix)
        if got:
            loaded[prefix] = got
    shared_chars: dict[str, str] = {}
    for prefix in emoji_sets:  # fluent-emoji has no chars, fluent-emoji-flat has (same names)
        if prefix in loaded:
            for cps, name in sorted(loaded[prefix][0].get("chars", {}).items()):
                shared_chars.setdefault(name, cps)
    for prefix in emoji_sets:
        if prefix not in loaded:
            continue
        data, licence = loaded.pop(prefix)
        got = emoji_icons(prefix, data, licence, index, emojilib, shared_chars, size, report)
        if emoji_cap is not None and len(got) > emoji_cap:
            report["iconify: emoji over the per-set cap of a quick run (not an error)"] += len(got) - emoji_cap
            got = got[:emoji_cap]
        log(f"iconify: {prefix}: {len(got)} emoji ({licence})")
        icons.extend(got)
    # pictograms: candidates per set, then caps
    per_set: dict[str, dict[str, tuple[str, dict, str | None]]] = {}
    meta: dict[str, tuple[dict, str]] = {}
    for prefix in pictogram_sets:
        got = load(prefix)
        if not got:
            continue
        data, licence = got
        per_set[prefix] = pictogram_candidates(prefix, data, report)
        meta[prefix] = ({k: data[k] for k in ("width", "height", "left", "top") if k in data}, licence)
    families = Counter(c for cands in per_set.values() for c in cands)
    quotas = {p: len(c) if set_cap is None else min(len(c), set_cap) for p, c in per_set.items()}
    if total_cap is not None:
        quotas = water_fill(quotas, max(0, total_cap - len(icons)))
    for prefix, cands in per_set.items():
        # concepts drawn by more sets first (they pair styles), then a fixed pseudo-random order
        order = sorted(cands, key=lambda c: (-families[c], _stable(c)))
        keep = order[: quotas[prefix]]
        if len(cands) > len(keep):
            report["iconify: pictogram over the per-set or overall cap (not an error)"] += len(cands) - len(keep)
        setinfo, licence = meta[prefix]
        for concept in sorted(keep):
            name, ic, category = cands[concept]
            svg, mono = icon_svg(ic, setinfo)
            colour = None
            if mono:
                colour = pick_colour(prefix, name)
                svg = svg.replace("currentColor", colour)
            icons.append(
                Icon(
                    prefix,
                    name,
                    svg,
                    licence,
                    "pictogram",
                    pictogram_captions(concept, category),
                    f"pictogram:{concept}",
                    label=normalize_category(category) if category else None,
                    colour=colour,
                )
            )
        log(f"iconify: {prefix}: {len(keep)} pictograms of {len(cands)} concepts ({licence})")
    return icons


# ================================================================ rendering pool


def _render_job(svg: str, size: int, dest: str) -> tuple[str, str | None]:
    try:
        img = render_svg(svg, size)
    except Exception as e:  # noqa: BLE001 - any renderer failure is one skipped icon
        return "error", f"{type(e).__name__}: {e}"[:200]
    if img is None:
        return "blank", None
    from .common import save_png

    return "ok", save_png(img, Path(dest))


def _worker_main(conn, job_fn=_render_job) -> None:
    conn.send(("ready",))  # started and imported: only now does a job's timeout clock run
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        idx, svg, size, dest = job
        conn.send((idx, *job_fn(svg, size, dest)))


class RenderPool:
    """``workers`` processes rendering one SVG at a time; a job over ``timeout`` seconds gets
    its worker killed (and replaced) and comes back as ("timeout", None). ``job_fn(svg, size,
    dest) -> (status, sha)`` does the work (a module-level function: workers are spawned)."""

    def __init__(self, workers: int, timeout: float, job_fn: Callable = _render_job):
        self.ctx = multiprocessing.get_context("spawn")
        self.timeout = timeout
        self.job_fn = job_fn
        self.start_failures = 0
        self.workers = [self._start() for _ in range(max(1, workers))]

    def _start(self):
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker_main, args=(child, self.job_fn), daemon=True)
        proc.start()
        child.close()
        return {"proc": proc, "conn": parent, "job": None, "t0": 0.0, "ready": False}

    def run(self, jobs: list[tuple[int, str, int, str]]):
        """Yield (idx, status, sha) for every job, in completion order."""
        pending = list(reversed(jobs))
        while pending or any(w["job"] is not None for w in self.workers):
            for w in self.workers:
                if w["ready"] and w["job"] is None and pending:
                    job = pending.pop()
                    w["job"], w["t0"] = job[0], time.monotonic()
                    w["conn"].send(job)
            watch = {w["conn"]: w for w in self.workers if w["job"] is not None or not w["ready"]}
            for conn in wait_conns(list(watch), timeout=0.5):
                w = watch[conn]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):  # the worker died (crash in the renderer)
                    msg = None
                if msg == ("ready",):
                    w["ready"] = True
                    continue
                if msg is None:
                    if not w["ready"]:
                        self.start_failures += 1
                        if self.start_failures > 3:
                            raise RuntimeError(
                                "resvg render workers die on start-up (run with --workers 1 "
                                "and check that `import resvg_py` works)"
                            )
                    idx, status, sha = w["job"], "error", None
                    self._replace(w)
                else:
                    idx, status, sha = msg
                w["job"] = None
                if idx is not None:
                    yield idx, status, sha
            now = time.monotonic()
            for w in self.workers:
                if w["job"] is not None and (now - w["t0"] > self.timeout or not w["proc"].is_alive()):
                    idx = w["job"]
                    status = "timeout" if w["proc"].is_alive() else "error"
                    self._replace(w)
                    w["job"] = None
                    yield idx, status, None

    def _replace(self, w: dict) -> None:
        w["proc"].kill()
        w["proc"].join(5)
        w["conn"].close()
        w.update(self._start())
        w["job"] = None

    def close(self) -> None:
        for w in self.workers:
            try:
                w["conn"].send(None)
            except (OSError, BrokenPipeError):
                pass
        for w in self.workers:
            w["proc"].join(2)
            if w["proc"].is_alive():
                w["proc"].kill()
                w["proc"].join(2)


def cache_name(icon: Icon, size: int) -> str:
    """``<name>.<12 hex of sha256(svg text, size, colour)>``: a changed icon gets a new file."""
    h = hashlib.sha256(f"{icon.svg}\0{size}\0{icon.colour or ''}".encode()).hexdigest()[:12]
    return f"{icon.name}.{h}"


def _sha_if_cached(path: Path, size: int) -> str | None:
    from .common import cached_png

    hit = cached_png(path, size)
    return None if hit is None else hit[1]


def render_all(
    icons: list[Icon],
    out_dir: Path,
    size: int,
    *,
    workers: int,
    timeout: float,
    report: Counter,
    log: Callable[[str], object],
) -> list[tuple[Icon, Path, str]]:
    """(icon, PNG path, PNG sha256) for every icon that renders; reuses cached PNGs; blank,
    failed and timed-out renders are counted and remembered with a marker file."""
    base = out_dir / "images" / "iconify"
    done: list[tuple[Icon, Path, str]] = []
    jobs = []
    for i, icon in enumerate(icons):
        stem = base / icon.prefix / cache_name(icon, size)
        png = stem.with_suffix(stem.suffix + ".png")
        sha = _sha_if_cached(png, size)
        if sha is not None:
            done.append((icon, png, sha))
            continue
        marker = next((m for m in ("blank", "failed") if stem.with_suffix(stem.suffix + "." + m).exists()), None)
        if marker == "blank":
            report["iconify: renders blank"] += 1
            continue
        if marker == "failed":
            report["iconify: resvg failed or timed out"] += 1
            continue
        png.parent.mkdir(parents=True, exist_ok=True)
        jobs.append((i, icon.svg, size, str(png)))
    log(f"iconify: {len(done)} PNGs cached, {len(jobs)} to render with {workers} worker(s)")
    if not jobs:
        return done
    per_set = Counter()
    t0 = time.monotonic()
    pool = RenderPool(workers, timeout)
    try:
        for n, (i, status, sha) in enumerate(pool.run(jobs), 1):
            icon = icons[i]
            stem = base / icon.prefix / cache_name(icon, size)
            png = stem.with_suffix(stem.suffix + ".png")
            if status == "ok":
                done.append((icon, png, sha))
                per_set[icon.prefix] += 1
            elif status == "blank":
                report["iconify: renders blank"] += 1
                write_text(stem.with_suffix(stem.suffix + ".blank"), "")
            else:
                report["iconify: resvg failed or timed out"] += 1
                write_text(stem.with_suffix(stem.suffix + ".failed"), f"{status}\n")
                if status == "timeout":
                    log(f"iconify: {icon.prefix}:{icon.name} took over {timeout:.0f} s; killed and skipped")
            if n % 2000 == 0 or n == len(jobs):
                rate = n / max(1e-6, time.monotonic() - t0)
                eta = (len(jobs) - n) / max(rate, 1e-6)
                log(
                    f"iconify: rendered {n}/{len(jobs)} ({rate:.0f}/s, ~{eta:.0f} s left); "
                    + ", ".join(f"{p} {c}" for p, c in sorted(per_set.items()))
                )
    finally:
        pool.close()
    return done


# ================================================================ build


def write_attribution(out_dir: Path, rows: list[dict], sets_info: dict) -> Path:
    """``ATTRIBUTION.md``: every CC-BY set used (name, author, licence, URL, count)."""
    counts = Counter(r["style"] for r in rows if r.get("source") == "iconify")
    lines = [
        "# Attribution",
        "",
        "Pictures under `images/iconify/` come from Iconify's icon sets "
        f"(npm `{PACKAGE}`). The sets below are licensed under Creative Commons Attribution; "
        "a model or data set derived from them must credit them as follows.",
        "",
        "| set | prefix | author | licence | rows |",
        "|---|---|---|---|---|",
    ]
    used = [p for p in sorted(counts) if needs_attribution(sets_info.get(p, {}).get("licence") or "")]
    for p in used:
        info = sets_info[p]
        author = info.get("author") or {}
        who = author.get("name", "unknown")
        if author.get("url"):
            who = f"[{who}]({author['url']})"
        lic = info["licence"]
        if info.get("licence_url"):
            lic = f"[{lic}]({info['licence_url']})"
        note = f" ({info['override']})" if info.get("override") else ""
        lines.append(f"| {info.get('name', p)} | `{p}` | {who} | {lic}{note} | {counts[p]} |")
    others = sorted(p for p in counts if p not in used)
    if others:
        lines += [
            "",
            "Sets used under licences without an attribution clause for this use "
            "(their licence files still apply): "
            + ", ".join(f"`{p}` ({sets_info.get(p, {}).get('licence')}, {counts[p]})" for p in others)
            + ".",
        ]
    path = out_dir / ATTRIBUTION
    write_text(path, "\n".join(lines) + "\n")
    return path


def build(
    out_dir: Path,
    *,
    limit: int | None = None,
    size: int = 224,
    root: Path | None = None,
    report: Counter | None = None,
    log=None,
    emojilib: Path | None = None,
    set_cap: int | None = DEFAULT_SET_CAP,
    total_cap: int | None = DEFAULT_TOTAL_CAP,
    workers: int = DEFAULT_WORKERS,
    timeout: float = TIMEOUT_S,
    emoji_sets: Iterable[str] = EMOJI_SETS,
    pictogram_sets: Iterable[str] = PICTOGRAM_SETS,
    info: dict | None = None,
) -> list[dict]:
    """Render the chosen Iconify sets into ``out_dir/images/iconify/<prefix>/`` and return rows.

    ``root``: the npm package (.tgz or unpacked folder); SourceMissing when absent.
    ``limit`` caps rows in all (overrides ``total_cap`` when smaller) and spreads them over
    the sets (a quick run sees every style). ``info`` (a dict)
    receives per-set metadata, package version and renderer version for the stats sidecar.
    Also writes ``out_dir/ATTRIBUTION.md``.
    """
    log = log or (lambda m: None)
    if root is None:
        raise SourceMissing(f"the Iconify icon sets are not installed (npm, not Debian) — {HOW_TO_GET}")
    root = Path(root)
    if not root.exists():
        raise SourceMissing(f"Iconify package not found at {root} — {HOW_TO_GET}")
    try:
        import resvg_py
    except ImportError:
        raise SourceMissing(
            "resvg-py (renders the Iconify SVGs) is not installed — run: pip install 'mbm[train]'"
        ) from None
    report = report if report is not None else Counter()
    pkg = IconifyPackage(root)
    lib = load_emojilib(emojilib)
    if emojilib is None:
        log(f"iconify: no emojilib given: emoji get no keyword captions ({EMOJILIB_HOW})")
    cap = total_cap if limit is None else (limit if total_cap is None else min(limit, total_cap))
    emoji_sets, pictogram_sets = tuple(emoji_sets), tuple(pictogram_sets)
    emoji_cap = None
    if limit is not None:  # a quick run: a few icons from every set rather than one set's
        share = max(1, -(-limit // max(1, len(emoji_sets) + len(pictogram_sets))))
        emoji_cap, set_cap = share, share if set_cap is None else min(set_cap, share)
    sets_info: dict = {}
    t0 = time.monotonic()
    icons = select_icons(
        pkg,
        size=size,
        emojilib=lib,
        set_cap=set_cap,
        total_cap=cap,
        emoji_cap=emoji_cap,
        emoji_sets=emoji_sets,
        pictogram_sets=pictogram_sets,
        report=report,
        sets_info=sets_info,
        log=log,
    )
    if cap is not None and len(icons) > cap:
        report["iconify: emoji over the overall cap (not an error)"] += len(icons) - cap
        icons = icons[:cap]
    log(f"iconify: {len(icons)} icons chosen in {time.monotonic() - t0:.0f} s")
    rendered = render_all(icons, Path(out_dir), size, workers=workers, timeout=timeout, report=report, log=log)
    rows = []
    for icon, png, sha in sorted(rendered, key=lambda x: (x[0].prefix, x[0].name)):
        row = {
            "image": png.relative_to(out_dir).as_posix(),
            "captions": icon.captions,
            "label": icon.label,
            "source": "iconify",
            "style": icon.prefix,
            "group": icon.group,
            "licence": icon.licence,
            "sha256": sha,
            "source_sha256": icon.key,
            "origin": f"iconify:{icon.prefix}:{icon.name}",
        }
        if icon.colour:
            row["colour"] = icon.colour
        rows.append(row)
    per = Counter(r["style"] for r in rows)
    log("iconify: rows per set: " + ", ".join(f"{p} {n}" for p, n in sorted(per.items())))
    write_attribution(Path(out_dir), rows, sets_info)
    if info is not None:
        info.update(
            {
                "package": PACKAGE,
                "package_version": pkg.version,
                "resvg_py": getattr(resvg_py, "__version__", None),
                "resvg": getattr(resvg_py, "__resvg_version__", None),
                "sets": {p: d | {"rows": per.get(p, 0)} for p, d in sorted(sets_info.items())},
            }
        )
    return rows
