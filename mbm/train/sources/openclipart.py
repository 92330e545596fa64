"""Open Clip Art Library 0.18 (Debian ``openclipart-svg``): public-domain SVG clip art.

Captions come from each SVG's Dublin Core metadata: the ``dc:title`` (cleaned: CamelCase and
underscores split, author/date/URL boilerplate removed) and, as a second caption, the title
followed by the ``dc:subject`` keywords ("red car, transport, car"). The package is noisy:
the same file appears under several categories (symlinks and copies), ~4,500 files share a
handful of boilerplate titles ("gramastar", "Part of the Flat Icon Collection ..."), and the
``special/`` category holds gradients and patterns rather than objects. All three are dropped.
"""

from __future__ import annotations

import hashlib
import html
import io
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

from PIL import Image

from .common import (
    LICENCES,
    BuildJob,
    SourceMissing,
    cap_length,
    crop_to_content,
    is_blank,
    on_white,
    pad_square,
    split_words,
    strip_urls_emails,
)

ROOT = Path("/usr/share/openclipart/svg")
APT = "apt-get install -y openclipart-svg librsvg2-bin"
MAX_TITLE_USES = 3  # a title on more images than this is a collection name, not a description
MARGIN = 0.04  # white border around the cropped drawing, as for emoji (0.06) and stamps
TIMEOUT_S = 20  # a few SVGs take over a minute in rsvg-convert; they are not worth the wait
SKIP_CATEGORIES = {"special"}  # gradients, patterns, test files: no objects to caption

_STOP_KEYWORDS = {
    "",
    "hash",
    "unsorted",
    "lemon theme icon",
    "theme",
    "icons",
    "icon",
    "clip art",
    "clipart",
    "svg",
    "image",
    "images",
    "media",
    "public domain",
    "openclipart",
    "remix",
    "externalsource",
    "mapsym",
    "musicstuff",
    "special",
    "other",
    "misc",
    "various",
    "untagged",
    "uncategorized",
    "none",
    "new",
    "inkscape",
    "png",
    "drawing",
    "graphics",
    "clip",
    "art",
    "stuff",
}

_BOILERPLATE = [
    # "Clipart by Nicu Buculei - smiley111": the author prefix of one large upload batch
    re.compile(r"^\s*(?:clip\s*art|drawing|image|picture|icon)s?\s+by\s+[^-–:]+?\s*[-–:]\s*", re.I),
    # "(Wed Aug 25 23:29:46 2004)": upload timestamps
    re.compile(r"\([^)]*\b(?:19|20)\d\d\b[^)]*\)"),
    re.compile(r"\b(?:in\s+)?svg(?:\s+format)?\b", re.I),
    re.compile(r"\bopen\s*clip\s*art(?:\s+library)?(?:\.org)?\b|\bclip\s*art\b|\bpublic\s+domain\b", re.I),
]
# "Flower by John Doe": a trailing author credit (capitalised name, so "stand by me" survives)
_BY_AUTHOR = re.compile(r"\s+(?:(?:drawn|made|created|designed|uploaded|submitted)\s+)?by\s+[A-Z@].*$")


def clean_title(title: str) -> str:
    """Caption text from a ``dc:title``: ``"RedCar"`` -> ``"red car"``.

    Removes markup, URLs, e-mails, author credits, upload dates and "SVG"/"clip art" words;
    splits CamelCase and underscores; drops zero-padded and trailing numbers ("Tigre02" ->
    "tigre"); lowercases; caps at 200 characters. Returns "" when nothing descriptive is left.
    """
    text = html.unescape(re.sub(r"<[^>]+>", " ", title))
    text = strip_urls_emails(text)
    for pattern in _BOILERPLATE:
        text = pattern.sub(" ", text)
    text = _BY_AUTHOR.sub("", text)
    text = split_words(text).lower()
    tokens = [t for t in text.split() if not re.fullmatch(r"0\d+", t)]
    while len(tokens) > 1 and tokens[-1].isdigit():  # version/series numbers: "guitar 2"
        tokens.pop()
    text = " ".join(tokens).strip(" -–,.;:/")
    text = re.sub(r"\(\s*\)", "", text).strip()
    if not re.search(r"[a-z]{2}", text):
        return ""
    return cap_length(text, 200)


def clean_keywords(keywords: list[str], title: str) -> list[str]:
    """Useful ``dc:subject`` keywords, cleaned like titles, without stop words and duplicates."""
    out: list[str] = []
    for kw in keywords:
        if re.search(r"0x[0-9a-f]{4,}|hash\(", kw, re.I):
            continue  # "hash(0x8a07724)": memory addresses a broken exporter wrote as tags
        kw = split_words(strip_urls_emails(html.unescape(kw))).lower().strip(" ,.;:")
        if kw in _STOP_KEYWORDS or len(kw) > 30 or not re.search(r"[a-z]{2}", kw):
            continue  # 30+ characters are glued-together tags ("collantcorpinorinforzato...")
        if kw != title and kw not in out:
            out.append(kw)
    return out


def captions_for(title: str, keywords: list[str]) -> list[str]:
    """``["red car", "red car, transport, car"]``; one caption when there are no keywords."""
    caps = [title]
    if keywords:
        caps.append(cap_length(", ".join([title, *keywords]), 200))
    return caps


def read_metadata(data: bytes) -> tuple[str, list[str]]:
    """(title, keywords) of an SVG's ``cc:Work`` metadata; regex, because many files are not
    well-formed XML and a full parse of a 5 MB drawing is slow."""
    md = re.search(rb"<metadata.*?</metadata>", data, re.S)
    if not md:
        return "", []
    text = md.group(0).decode("utf-8", "replace")
    work = re.search(r"<cc:Work\b.*?</cc:Work>", text, re.S)
    text = work.group(0) if work else text
    # the work's own dc:title comes before the publisher/creator agents' dc:title
    head = re.split(r"<dc:(?:publisher|creator|rights)\b", text, maxsplit=1)[0]
    title = re.search(r"<dc:title>(.*?)</dc:title>", head, re.S)
    subject = re.search(r"<dc:subject>(.*?)</dc:subject>", text, re.S)
    keywords = re.findall(r"<rdf:li>(.*?)</rdf:li>", subject.group(1), re.S) if subject else []
    # authors sometimes tagged their own name: drop keywords equal to a creator/publisher name
    agents = {a.strip().lower() for a in re.findall(r"<cc:Agent\b[^>]*>\s*<dc:title>(.*?)</dc:title>", text, re.S)}
    keywords = [k.strip() for k in keywords if k.strip().lower() not in agents]
    return (title.group(1).strip() if title else ""), keywords


_NOT_DRAWING = [
    re.compile(rb"<\?xml.*?\?>|<!DOCTYPE.*?>|<!--.*?-->", re.S),
    re.compile(rb"<metadata\b.*?</metadata>|<title\b.*?</title>|<desc\b.*?</desc>", re.S),
    re.compile(rb"<sodipodi:namedview\b.*?(?:/>|</sodipodi:namedview>)", re.S),
    re.compile(rb"\s(?:inkscape|sodipodi):[\w-]+=\"[^\"]*\""),
    re.compile(rb"\s(?:id|xml:space|version)=\"[^\"]*\""),
]


def drawing_key(data: bytes) -> str:
    """sha256 (16 hex) of an SVG's drawing: the file without its metadata, title, comments,
    editor state (Inkscape/Sodipodi attributes), ids and whitespace differences.

    The same clip art filed under several names differs mostly in those parts; its drawing
    key is equal, so its copies share a group (and a split). Computed from the source file,
    never from a rendering, it is the same on every machine.
    """
    for pattern in _NOT_DRAWING:
        data = pattern.sub(b" ", data)
    data = re.sub(rb"\s+", b" ", data).replace(b"> <", b"><").strip()
    return hashlib.sha256(data).hexdigest()[:16]


def rasterise(svg: Path, size: int, *, timeout: float = TIMEOUT_S, margin: float = MARGIN) -> Image.Image | None:
    """Render an SVG into a white ``size`` square; None on failure or timeout.

    The drawing is rendered at twice the size, cropped to its non-white bounding box and
    scaled into the square with a small margin: many SVG pages are much larger than the
    drawing on them, which would otherwise leave a tiny picture in a white field.
    An all-white render comes back as a blank square (callers test ``is_blank``).
    """
    big = 2 * size
    cmd = ["rsvg-convert", "--keep-aspect-ratio", "-w", str(big), "-h", str(big), "-b", "white", "-f", "png", str(svg)]
    try:
        res = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None
    if res.returncode != 0 or not res.stdout:
        return None
    try:
        img = Image.open(io.BytesIO(res.stdout))
        img.load()
    except (OSError, Image.DecompressionBombError):
        return None
    content = crop_to_content(on_white(img))
    if content is None:
        return Image.new("RGB", (size, size), (255, 255, 255))
    return pad_square(content, size, margin=margin)


def _candidates(root: Path, report: Counter) -> list[tuple[str, Path, str, list[str], str, str]]:
    """Unique SVGs as (relative path, file, title, keywords, file sha256, drawing key):
    symlinks and byte-identical copies removed."""
    paths = sorted(root.rglob("*.svg"), key=lambda p: (p.relative_to(root).parts[0] in SKIP_CATEGORIES, str(p)))
    seen_real: set[Path] = set()
    seen_hash: set[str] = set()
    out = []
    for p in paths:
        real = p.resolve()
        if real in seen_real:
            report["openclipart: symlink to a file already taken"] += 1
            continue
        seen_real.add(real)
        try:
            data = real.read_bytes()
        except OSError:
            report["openclipart: unreadable file"] += 1
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen_hash:
            report["openclipart: byte-identical copy of a file already taken"] += 1
            continue
        seen_hash.add(digest)
        title, keywords = read_metadata(data)
        out.append((p.relative_to(root).as_posix(), p, title, keywords, digest, drawing_key(data)))
    return out


def _render_once(svg: Path, size: int, failed: Path, report: Counter) -> Image.Image | None:
    """``rasterise(svg)``, None when it fails or renders blank; a failure leaves the ``failed``
    marker, so a re-run does not wait on the same timeouts again (and is not retried)."""
    img = None if failed.exists() else rasterise(svg, size)
    if img is None:
        report["openclipart: rsvg-convert failed or timed out"] += 1
        failed.parent.mkdir(parents=True, exist_ok=True)
        failed.touch()
        return None
    if is_blank(img):
        report["openclipart: renders blank"] += 1
        return None
    return img


def build(job: BuildJob, *, root: Path = ROOT) -> list[dict]:
    """Rasterise Open Clip Art into ``<out>/images/openclipart/`` and return manifest rows.

    Rows carry ``group = "openclipart:<drawing key>"`` (:func:`drawing_key`, from the SVG
    source, not the pixels) so the same drawing filed under several names shares a split,
    and ``source_sha256`` (the SVG file's sha256). ``job.limit`` caps the number of rows (taken
    in path order). ``job.report`` receives the count of each reason an item was dropped.
    Raises SourceMissing when the package or rsvg-convert is absent.
    """
    root = Path(root)
    if not root.is_dir() or next(root.rglob("*.svg"), None) is None:
        raise SourceMissing(f"Open Clip Art not found under {root} — install it with: {APT}")
    if shutil.which("rsvg-convert") is None:
        raise SourceMissing(f"rsvg-convert (to rasterise Open Clip Art) not found — install it with: {APT}")
    report = job.report
    cands = _candidates(root, report)
    title_uses = Counter(c[2].strip() for c in cands)
    rows: list[dict] = []
    t0 = time.monotonic()
    for i, (rel, path, raw_title, raw_keywords, file_sha, drawing) in enumerate(cands):
        if job.full(rows):
            break
        if i and i % 1000 == 0:
            job.say(f"openclipart: {i}/{len(cands)} files looked at, {len(rows)} kept, {time.monotonic() - t0:.0f} s")
        category = rel.split("/", 1)[0]
        if category in SKIP_CATEGORIES:
            report["openclipart: special/ category (gradients, patterns)"] += 1
            continue
        if title_uses[raw_title.strip()] > MAX_TITLE_USES and raw_title.strip():
            report[f"openclipart: title used by more than {MAX_TITLE_USES} images"] += 1
            continue
        title = clean_title(raw_title)
        if not title:
            report["openclipart: no usable title"] += 1
            continue
        dest = job.image_file("openclipart", rel[:-4] + ".png")
        failed = dest.with_name(dest.name + f".failed-{job.size}")
        sha = job.png(dest, _render_once, path, job.size, failed, report)
        if sha is None:
            continue
        rows.append(
            {
                "image": job.relative(dest),
                "captions": captions_for(title, clean_keywords(raw_keywords, title)),
                "label": category,
                "source": "openclipart",
                "style": "openclipart",
                "group": f"openclipart:{drawing}",
                "licence": LICENCES["openclipart"],
                "sha256": sha,
                "source_sha256": file_sha,
                "origin": f"openclipart-svg:{rel}",
            }
        )
    return rows
