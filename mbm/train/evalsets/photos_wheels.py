"""The photos of the evaluation set that ship inside PyPI wheels: scikit-image's and scikit-learn's samples.

Only files inside the wheels (never ``skimage.data``'s pooch downloads); licences from
the skimage.data docstrings and scikit-learn's ``images/README.txt``.
"""

from __future__ import annotations

from mbm.train.evalsets.photo_source import Photo

_SK = "skimage"
_SKL = "sklearn"

WHEEL_PHOTOS: tuple[Photo, ...] = (
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
)
