"""The photos of the evaluation set from Debian wallpaper packages (MATE, KDE Plasma, Lomiri).

Licences as the packages state them (``/usr/share/doc/<package>/copyright``, the
wallpapers' ``metadata.json``).
"""

from __future__ import annotations

from mbm.train.evalsets.photo_source import Photo

_MATE = "mate-backgrounds"
_KDE = "plasma-workspace-wallpapers"
_L16 = "lomiri-wallpapers-16.04"
_L20 = "lomiri-wallpapers-20.04"
_MATE_DIR = "/usr/share/backgrounds/mate/nature/"
_KDE_DIR = "/usr/share/wallpapers/"
_LOMIRI_DIR = "/usr/share/backgrounds/"


def _kde(name: str, size: str = "1280x800") -> str:
    return f"{_KDE_DIR}{name}/contents/images/{size}.jpg"


DEBIAN_PHOTOS: tuple[Photo, ...] = (
    # MATE backgrounds (GPL-2+, /usr/share/doc/mate-backgrounds/copyright)
    Photo(
        "mate_aqua",
        _MATE,
        _MATE_DIR + "Aqua.jpg",
        "GPL-2.0-or-later",
        "Charles Barbin",
        ("a drop of water splashing", "a splash in water, close up"),
    ),
    Photo(
        "mate_blinds",
        _MATE,
        _MATE_DIR + "Blinds.jpg",
        "GPL-2.0-or-later",
        "Lennart Poettering, Andrea Cimitan",
        ("a green leaf close up", "the veins of a bright green leaf"),
    ),
    Photo(
        "mate_dune",
        _MATE,
        _MATE_DIR + "Dune.jpg",
        "GPL-2.0-or-later",
        "Marco Cogoni, Hylke Bons",
        ("dune grass by the sea", "dry grass in front of a blue sea"),
    ),
    Photo(
        "mate_freshflower",
        _MATE,
        _MATE_DIR + "FreshFlower.jpg",
        "GPL-2.0-or-later",
        "Jens Ansorg",
        ("bright orange petals, close up", "a macro photo of an orange flower"),
    ),
    Photo(
        "mate_garden",
        _MATE,
        _MATE_DIR + "Garden.jpg",
        "GPL-2.0-or-later",
        "Charles Barbin",
        ("a red and yellow marigold", "a red flower in a garden"),
    ),
    Photo(
        "mate_greenmeadow",
        _MATE,
        _MATE_DIR + "GreenMeadow.jpg",
        "GPL-2.0-or-later",
        "Timothy Schellhase, Lapo Calamandrei",
        ("fresh green grass", "a green meadow, close up"),
    ),
    Photo(
        "mate_ladybird",
        _MATE,
        _MATE_DIR + "LadyBird.jpg",
        "GPL-2.0-or-later",
        "Charles Barbin",
        ("a ladybird on a blade of grass", "a ladybug among small blue flowers"),
    ),
    Photo(
        "mate_raindrops",
        _MATE,
        _MATE_DIR + "RainDrops.jpg",
        "GPL-2.0-or-later",
        "blackcombwhistler07",
        ("raindrops on green leaves", "water drops on a leaf"),
    ),
    Photo(
        "mate_storm",
        _MATE,
        _MATE_DIR + "Storm.jpg",
        "GPL-2.0-or-later",
        "Sergey Nazarov",
        ("storm clouds over a road", "a dark stormy sky over a highway"),
    ),
    Photo(
        "mate_twowings",
        _MATE,
        _MATE_DIR + "TwoWings.jpg",
        "GPL-2.0-or-later",
        "Charles Barbin, Hylke Bons",
        ("two dandelion seeds", "dandelion seeds in front of orange flowers"),
    ),
    Photo(
        "mate_wood",
        _MATE,
        _MATE_DIR + "Wood.jpg",
        "GPL-2.0-or-later",
        "Jean-François Fortin Tam",
        ("wooden planks, close up", "pale wooden boards"),
    ),
    Photo(
        "mate_yellowflower",
        _MATE,
        _MATE_DIR + "YellowFlower.jpg",
        "GPL-2.0-or-later",
        "Charles Barbin",
        ("a yellow flower, close up", "yellow petals around a dark centre"),
    ),
    # KDE Plasma wallpapers (metadata.json of each: LGPLv3)
    Photo(
        "kde_bythewater",
        _KDE,
        _kde("BytheWater"),
        "LGPL-3.0",
        "Maciej Wiklo",
        ("a wooden jetty by a lake", "wooden boards on a dock by the water"),
    ),
    Photo(
        "kde_coldripple",
        _KDE,
        _kde("ColdRipple"),
        "LGPL-3.0",
        "Risto Saukonpää",
        ("a wooden pier in the fog", "a black and white photo of a jetty on a calm lake"),
    ),
    Photo(
        "kde_colorfulcups",
        _KDE,
        _kde("ColorfulCups", "2560x1600"),
        "LGPL-3.0",
        "Dmitri Popov",
        ("colourful plastic cups seen from above", "stacks of blue and pink cups"),
    ),
    Photo(
        "kde_darkesthour",
        _KDE,
        _kde("DarkestHour"),
        "LGPL-3.0",
        "Risto Saukonpää",
        ("a misty lake in blue twilight", "dark blue water and sky with a line of trees"),
    ),
    Photo(
        "kde_eveningglow",
        _KDE,
        _kde("EveningGlow"),
        "LGPL-3.0",
        "Ian Hex",
        ("rowing boats on a lake shore at sunset", "wooden boats on a beach under a cloudy evening sky"),
    ),
    Photo(
        "kde_fallenleaf",
        _KDE,
        _kde("FallenLeaf"),
        "LGPL-3.0",
        "Martin Klapetek",
        ("autumn leaves on the ground", "a fallen maple leaf"),
    ),
    Photo(
        "kde_grey",
        _KDE,
        _kde("Grey"),
        "LGPL-3.0",
        "Sigi Sagi",
        ("a black and white photo of a curved building facade", "abstract architecture in grey"),
    ),
    Photo(
        "kde_kite",
        _KDE,
        _kde("Kite"),
        "LGPL-3.0",
        "Risto Saukonpää",
        ("a colourful kite in a blue sky", "a kite flying among clouds"),
    ),
    Photo(
        "kde_onestandsout",
        _KDE,
        _kde("OneStandsOut"),
        "LGPL-3.0",
        "Risto Saukonpää",
        ("moss seen from above", "green moss with one orange shoot"),
    ),
    Photo(
        "kde_path",
        _KDE,
        _kde("Path"),
        "LGPL-3.0",
        "Risto Saukonpää",
        ("a path through a pine forest", "a trail in a dark green forest"),
    ),
    Photo(
        "kde_summer1am",
        _KDE,
        _kde("summer_1am"),
        "LGPL-3.0",
        "Risto Saukonpää",
        ("a calm lake under a pink evening sky", "reeds on a still lake at dusk"),
    ),
    # Lomiri wallpapers (/usr/share/doc/lomiri-wallpapers-16.04/copyright)
    Photo(
        "lomiri_bridge",
        _L16,
        _LOMIRI_DIR + "Bridge_by_Sander_Klootwijk.jpg",
        "CC-BY-SA-4.0",
        "Sander Klootwijk",
        ("the cables of a bridge against a blue sky", "looking down from a bridge over a wide sandy estuary"),
    ),
    Photo(
        "lomiri_dragonfly",
        _L16,
        _LOMIRI_DIR + "Dragonfly_by_Bolly.jpg",
        "CC-BY-SA-4.0",
        "Bolly",
        ("a dragonfly on a twig", "a dragonfly among green leaves under a blue sky"),
    ),
    Photo(
        "lomiri_fig",
        _L16,
        _LOMIRI_DIR + "Picture_0B_by_freespace.jpg",
        "CC-BY-4.0",
        'Trevor "Freespace"',
        ("half a fig in a red bowl", "a cut fig on an orange plate"),
    ),
    Photo(
        "lomiri_brushes",
        _L16,
        _LOMIRI_DIR + "Picture_1A_by_freespace.jpg",
        "CC-BY-4.0",
        'Trevor "Freespace"',
        ("paint brushes with colourful bristles", "used paintbrushes in a jar"),
    ),
    Photo(
        "lomiri_wine",
        _L16,
        _LOMIRI_DIR + "Wine_by_Jakkub_Mede.jpg",
        "CC-BY-4.0",
        "Jakub Mede",
        ("a bottle of wine and a glass on a wooden table", "a drum on a beanbag in a room"),
    ),
    Photo(
        "lomiri_aitzgorri",
        _L16,
        _LOMIRI_DIR + "aitzgorri_by_Aitzol_Berasategi.jpg",
        "CC-BY-4.0",
        "Aitzol Berasategi",
        ("a mountain above an autumn forest", "a green meadow in front of rocky mountains"),
    ),
    Photo(
        "lomiri_free",
        _L16,
        _LOMIRI_DIR + "free_by_Peter_Nerlich.jpg",
        "CC-BY-SA-4.0",
        "Peter Nerlich",
        ("a toy bird hanging from a ceiling lamp", "a wooden bird with spread wings under round lamps"),
    ),
    Photo(
        "lomiri_friends",
        _L16,
        _LOMIRI_DIR + "friends_by_Aitzol_Berasategi.jpg",
        "CC-BY-4.0",
        "Aitzol Berasategi",
        ("two dogs looking out of a window", "two brown spaniels at the window of a wooden house"),
    ),
    Photo(
        "lomiri_greentock",
        _L16,
        _LOMIRI_DIR + "greentock_by_Peter_Nerlich.jpg",
        "CC-BY-SA-4.0",
        "Peter Nerlich",
        ("a wall clock, close up", "a white clock with black hands"),
    ),
    Photo(
        "lomiri_life",
        _L16,
        _LOMIRI_DIR + "life_by_Aitzol_Berasategi.jpg",
        "CC-BY-4.0",
        "Aitzol Berasategi",
        ("a stream flowing over rocks in a forest", "a small waterfall in the woods"),
    ),
    Photo(
        "lomiri_picosdeeuropa",
        _L16,
        _LOMIRI_DIR + "picosdeeuropa_by_Aitzol_Berasategi.jpg",
        "CC-BY-4.0",
        "Aitzol Berasategi",
        ("a mountain path below rocky peaks", "a trail across a grassy slope below snowy mountains"),
    ),
    Photo(
        "lomiri_seeding",
        _L16,
        _LOMIRI_DIR + "seeding_by_Clements_Engelhardt.jpg",
        "CC0-1.0",
        "Clemens Engelhardt",
        ("dandelion seed heads in a field", "dandelion clocks in the evening sun"),
    ),
    Photo(
        "lomiri_sunset",
        _L16,
        _LOMIRI_DIR + "sunset_by_Aitzol_Berasategi.jpg",
        "CC-BY-4.0",
        "Aitzol Berasategi",
        ("the sun setting over mountains", "a stone table on a hilltop at sunset"),
    ),
    Photo(
        "lomiri_kleiber",
        _L20,
        _LOMIRI_DIR + "Kleiber_by_Lukas_Baubkus.jpg",
        "CC-BY-SA-3.0",
        "Lukas Baubkus",
        ("a nuthatch on a tree trunk", "a small bird climbing a tree"),
    ),
)
