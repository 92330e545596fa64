"""Which Iconify sets are read, and under which licence: the licence policy and the lists of sets."""

from __future__ import annotations

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
