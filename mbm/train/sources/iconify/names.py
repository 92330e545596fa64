"""Icon names to concepts and captions: emoji joined to the ``emoji`` package's concepts, pictogram names
turned into concepts (style suffixes collapsed, UI/abstract/brand names dropped)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from .. import emoji as emoji_src
from ..common import article, split_words


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
