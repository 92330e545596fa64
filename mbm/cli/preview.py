"""`mbm search --preview`: a thumbnail under each hit, in terminals that can show images.

Protocols, chosen from what the terminal says about itself:
- kitty's graphics protocol (kitty, Ghostty): ``ESC _ G a=T,f=100,q=2,...;<base64 PNG> ESC \\``, sent in
  4096-byte chunks; ``q=2`` silences the terminal's replies, which would otherwise land on stdin;
- iTerm2's inline images (iTerm2, WezTerm): ``ESC ] 1337 ; File=inline=1;size=N;height=R:<base64> BEL``;
- sixel, through the ``textual-image`` library (``pip install 'mbm[preview]'``), which asks the terminal
  (Device Attributes) whether it speaks sixel; asked only when stdin and stdout are both terminals.

Both escape protocols are a few lines each (https://sw.kovidgoyal.net/kitty/graphics-protocol/,
https://iterm2.com/documentation-images.html), so they need no library; sixel encoding does, and
textual-image is maintained and depends only on Pillow and rich (term-image, the other candidate,
pins Pillow < 11). Nothing at all is written when stdout is not a terminal (a pipe, a file,
``--json``), under tmux/screen (which drop or mangle the sequences unless configured to pass them
through), on ``TERM=dumb``, or when no protocol is known: the plain table then, never escape garbage.

Thumbnails are decoded like the indexer decodes (size limits, EXIF orientation, draft mode); a hit
whose file is gone or unreadable just has no picture.
"""

from __future__ import annotations

import base64
import io
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

THUMB_PX = 256
ROWS = 8  # terminal rows a thumbnail takes
CHUNK = 4096


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def detect(stream: Any = None, env: Mapping[str, str] | None = None, stdin: Any = None) -> str | None:
    """ "kitty", "iterm2", "sixel" or None: what this terminal can show on ``stream``."""
    stream = sys.stdout if stream is None else stream
    env = os.environ if env is None else env
    if not _isatty(stream):
        return None
    term = env.get("TERM", "")
    if term in ("", "dumb") or env.get("TMUX") or term.startswith(("screen", "tmux")):
        return None
    program = env.get("TERM_PROGRAM", "")
    if env.get("KITTY_WINDOW_ID") or term == "xterm-kitty" or program == "ghostty" or term == "xterm-ghostty":
        return "kitty"
    if program in ("iTerm.app", "WezTerm") or env.get("LC_TERMINAL") == "iTerm2":
        return "iterm2"
    if _isatty(sys.stdin if stdin is None else stdin) and _sixel_terminal():
        return "sixel"
    return None


def _sixel_terminal() -> bool:
    try:  # importing it asks the terminal (with a short timeout) what it supports
        from textual_image import renderable
    except ImportError:
        return False
    except Exception:  # noqa: BLE001 - a terminal that answers oddly is one we do not draw on
        return False
    return renderable.Image is renderable.SixelImage


def thumbnail(path: str, size: int = THUMB_PX) -> Any:
    """The picture at ``path`` as a small RGB image, or None when it cannot be read."""
    from mbm.indexer.decode import DecodeError, decode, read_file

    try:
        data, _ = read_file(path)
        image = decode(data, size)[0]
    except (DecodeError, OSError):
        return None
    image.thumbnail((size, size))
    return image


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def kitty(png: bytes, rows: int = ROWS) -> str:
    data = base64.standard_b64encode(png).decode("ascii")
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)] or [""]
    out = []
    for n, chunk in enumerate(chunks):
        more = int(n < len(chunks) - 1)
        head = f"a=T,f=100,q=2,r={rows},m={more}" if n == 0 else f"m={more}"
        out.append(f"\x1b_G{head};{chunk}\x1b\\")
    return "".join(out)


def iterm2(png: bytes, rows: int = ROWS) -> str:
    data = base64.standard_b64encode(png).decode("ascii")
    return f"\x1b]1337;File=inline=1;size={len(png)};height={rows};preserveAspectRatio=1:{data}\x07"


def image_sequence(protocol: str, image: Any, rows: int = ROWS) -> str | None:
    """The escape text that draws ``image`` in ``protocol`` (kitty / iterm2); None for sixel (drawn by rich)."""
    if protocol == "kitty":
        return kitty(_png(image), rows)
    if protocol == "iterm2":
        return iterm2(_png(image), rows)
    return None


def _draw_sixel(image: Any, stream: TextIO, rows: int) -> None:
    from rich.console import Console
    from textual_image.renderable import SixelImage

    Console(file=stream, force_terminal=True).print(SixelImage(image, height=rows))


def show_hits(
    hits: Sequence[Any],
    table: Callable[[Sequence[Any]], str],
    *,
    stream: Any = None,
    env: Mapping[str, str] | None = None,
    stdin: Any = None,
    warn: Callable[[str], None] | None = None,
) -> None:
    """Each hit's table line, then its thumbnail where the terminal can show one; else the plain table."""
    stream = sys.stdout if stream is None else stream
    protocol = detect(stream, env, stdin)
    if protocol is None:
        stream.write(table(hits) + "\n" if hits else "")
        stream.flush()
        if _isatty(stream) and warn is not None:
            warn("--preview: this terminal shows no images (kitty, iTerm2, WezTerm and sixel terminals do)")
        return
    for hit in hits:
        stream.write(table([hit]) + "\n")
        image = thumbnail(hit.path) if hit.text is None else None
        if image is not None:
            if protocol == "sixel":
                stream.flush()
                _draw_sixel(image, stream, ROWS)
            else:
                stream.write((image_sequence(protocol, image) or "") + "\n")
        stream.flush()
