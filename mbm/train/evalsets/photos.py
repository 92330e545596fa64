"""A small real-photo evaluation set from photos that ship inside installed packages.

Every photo below was looked at and captioned by hand (what is in the picture, plainly:
no guesses at places or names). Sources: scikit-image's bundled sample photos (only the
files inside the wheel, never ``skimage.data``'s pooch downloads), scikit-learn's two
sample images, and Debian wallpaper packages (MATE, KDE Plasma, Lomiri). Licences are as
the packages state them (``/usr/share/doc/<package>/copyright``, the wallpapers'
``metadata.json``, scikit-image's docstrings, scikit-learn's ``images/README.txt``).

It is an EVALUATION set: 54 photos are too few to train on, and training on them would
make the figures meaningless. Rows say so in their ``licence`` field.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

EVAL_ONLY = "evaluation only: never train on it"
WHEELS = {"skimage": "scikit-image", "sklearn": "scikit-learn"}  # import name -> PyPI distribution


@dataclass(frozen=True)
class Photo:
    id: str
    source: str  # "skimage", "sklearn" (a PyPI wheel) or a Debian package name
    path: str  # inside the Python package for wheels, absolute for Debian packages
    licence: str
    author: str
    captions: tuple[str, ...]

    @property
    def wheel(self) -> str | None:
        """The PyPI distribution a wheel photo ships in (None for Debian packages)."""
        return WHEELS.get(self.source)


_SK = "skimage"
_SKL = "sklearn"
_MATE = "mate-backgrounds"
_KDE = "plasma-workspace-wallpapers"
_L16 = "lomiri-wallpapers-16.04"
_L20 = "lomiri-wallpapers-20.04"
_MATE_DIR = "/usr/share/backgrounds/mate/nature/"
_KDE_DIR = "/usr/share/wallpapers/"
_LOMIRI_DIR = "/usr/share/backgrounds/"


def _kde(name: str, size: str = "1280x800") -> str:
    return f"{_KDE_DIR}{name}/contents/images/{size}.jpg"


PHOTOS: tuple[Photo, ...] = (
    # scikit-image sample data inside the wheel (skimage/data/); licences from the skimage.data docstrings
    Photo(
        "astronaut",
        _SK,
        "data/astronaut.png",
        "public domain",
        "NASA",
        ("an astronaut in an orange spacesuit", "a smiling woman astronaut holding a helmet in front of a flag"),
    ),
    Photo(
        "brick",
        _SK,
        "data/brick.png",
        "CC0-1.0",
        "CC0Textures (cropped by scikit-image)",
        ("a brick wall", "a black and white photo of bricks"),
    ),
    Photo(
        "camera",
        _SK,
        "data/camera.png",
        "CC0-1.0",
        "Lav Varshney",
        ("a man looking through a camera on a tripod", "a black and white photo of a photographer on a lawn"),
    ),
    Photo(
        "chelsea",
        _SK,
        "data/chelsea.png",
        "CC0-1.0",
        "Stefan van der Walt",
        ("a tabby cat", "a close-up of a ginger cat's face"),
    ),
    Photo(
        "coffee",
        _SK,
        "data/coffee.png",
        "CC0-1.0",
        "Rachel Michetti",
        ("a cup of coffee on a saucer", "an espresso in a red cup with a spoon on a wooden table"),
    ),
    Photo(
        "coins",
        _SK,
        "data/coins.png",
        "no known copyright restrictions",
        "Brooklyn Museum",
        ("old coins on a dark background", "rows of ancient coins"),
    ),
    Photo(
        "grass",
        _SK,
        "data/grass.png",
        "CC0-1.0",
        "linolafett (DeviantArt, cropped by scikit-image)",
        ("a black and white close-up of grass", "blades of grass in grey"),
    ),
    Photo(
        "gravel",
        _SK,
        "data/gravel.png",
        "CC0-1.0",
        "CC0Textures (cropped by scikit-image)",
        ("gravel", "a black and white close-up of small stones"),
    ),
    Photo(
        "hubble_deep_field",
        _SK,
        "data/hubble_deep_field.jpg",
        "public domain",
        "NASA / Hubble",
        ("galaxies in deep space", "a telescope image of many distant galaxies"),
    ),
    Photo(
        "moon",
        _SK,
        "data/moon.png",
        "not stated (scikit-image sample image)",
        "unknown",
        ("the surface of the moon", "a grey photo of craters"),
    ),
    Photo(
        "motorcycle",
        _SK,
        "data/motorcycle_left.png",
        "Middlebury 2014 stereo data set (research use)",
        "D. Scharstein et al., Middlebury College",
        ("a red motorcycle parked in a garage", "a motorbike in a workshop"),
    ),
    Photo(
        "page",
        _SK,
        "data/page.png",
        "not stated (scikit-image sample image)",
        "scikit-image",
        ("a page of printed text", "a scanned page of a book"),
    ),
    Photo(
        "retina",
        _SK,
        "data/retina.jpg",
        "CC0-1.0",
        "Mikael Häggström",
        ("a photo of the retina of an eye", "the back of a human eye with blood vessels"),
    ),
    Photo(
        "rocket",
        _SK,
        "data/rocket.jpg",
        "public domain",
        "SpaceX",
        ("a rocket on a launch pad at night", "a white rocket between launch towers"),
    ),
    Photo(
        "text",
        _SK,
        "data/text.png",
        "public domain",
        "Wikipedia (Corner.png)",
        ("handwritten equations on paper", "a black and white photo of handwriting"),
    ),
    # scikit-learn sample images (sklearn/datasets/images/README.txt)
    Photo(
        "china",
        _SKL,
        "datasets/images/china.jpg",
        "CC-BY-2.0",
        "danielbuechele (Flickr)",
        ("a Chinese pagoda on a hill above a lake", "a tall temple tower with red and green roofs among trees"),
    ),
    Photo(
        "flower",
        _SKL,
        "datasets/images/flower.jpg",
        "CC-BY-2.0",
        "vultilion (Flickr)",
        ("an orange dahlia", "a round orange flower in front of green leaves"),
    ),
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

DEBIAN_PACKAGES = tuple(sorted({p.source for p in PHOTOS if p.wheel is None}))
INSTALL_HINT = "apt-get install -y --no-install-recommends " + " ".join(DEBIAN_PACKAGES)


def package_dir(module: str) -> Path | None:
    """Where an installed Python package lives, found without importing it (None when absent)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def source_path(photo: Photo) -> Path | None:
    """The photo's file on this machine, or None when its package is not installed."""
    if photo.wheel is None:
        path = Path(photo.path)
    else:
        root = package_dir(photo.source)
        if root is None:
            return None
        path = root / photo.path
    return path if path.is_file() else None


def shipped_in_wheel(photo: Photo) -> bool:
    """True when the file is listed in its distribution's RECORD: shipped by pip, not fetched later (pooch)."""
    from importlib.metadata import PackageNotFoundError, files

    if photo.wheel is None:
        return False
    try:
        listed = {str(f).replace("\\", "/") for f in files(photo.wheel) or ()}
    except PackageNotFoundError:
        return False
    return f"{photo.source}/{photo.path}" in listed
