"""Choosing the icons to render: one per emoji concept and set, one variant per pictogram concept and set,
within the per-set and overall caps."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable

from .. import emoji as emoji_src
from .names import EmojiIndex, cp_key, emoji_captions, normalize_category, pictogram_captions, pictogram_concept
from .package import IconifyPackage
from .policy import ARTWORK_LICENCE_OVERRIDES, EMOJI_SETS, PICTOGRAM_SETS, VARIANT_PREFERENCE, set_licence
from .svg import Icon, icon_svg, pick_colour


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
        assert data is not None  # pkg.prefixes() lists only the sets it holds
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
        drawn = emoji_icons(prefix, data, licence, index, emojilib, shared_chars, size, report)
        if emoji_cap is not None and len(drawn) > emoji_cap:
            report["iconify: emoji over the per-set cap of a quick run (not an error)"] += len(drawn) - emoji_cap
            drawn = drawn[:emoji_cap]
        log(f"iconify: {prefix}: {len(drawn)} emoji ({licence})")
        icons.extend(drawn)
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
