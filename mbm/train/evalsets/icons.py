"""A style-shift evaluation set: one concept drawn by several desktop icon themes.

Icon themes name their icons after the freedesktop.org naming specification
("camera-photo", "weather-storm", "face-smile"), so the same concept can be taken from
several themes, each drawn in its own style. The concepts below are concrete ones picked
by eye from the themes' renders; their captions are the icon name in words ("camera
photo") and a plain description that holds for every theme's drawing ("a photo camera").
Where a theme draws two concepts with one picture (Papirus' headset is its headphones),
or two themes share a drawing (Adwaita's legacy icons are GNOME's), only the first is kept.

These themes are GPL / LGPL / CC-BY-SA: EVALUATION ONLY, never training data for a model
mbm ships. Every row's ``licence`` field says so.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

EVAL_ONLY = "evaluation only: never train on it"
ICON_ROOT = Path("/usr/share/icons")
MIN_PNG = 48  # bitmaps smaller than this are too blurry once scaled to the model's input


@dataclass(frozen=True)
class Theme:
    style: str
    package: str
    folder: str  # under /usr/share/icons
    licence: str
    skip_dirs: tuple[str, ...] = ()  # folder names whose icons are copies of another theme's


THEMES: tuple[Theme, ...] = (
    Theme("papirus", "papirus-icon-theme", "Papirus", "GPL-3.0"),
    Theme("breeze", "breeze-icon-theme", "breeze", "LGPL-3.0-or-later"),
    Theme("oxygen", "oxygen-icon-theme", "oxygen", "LGPL-3.0-or-later"),
    Theme("elementary-xfce", "elementary-xfce-icon-theme", "elementary-xfce", "GPL-2.0-or-later"),
    Theme("gnome", "gnome-icon-theme", "gnome", "GPL-2.0-or-later"),
    Theme("adwaita", "adwaita-icon-theme", "Adwaita", "LGPL-3.0 or CC-BY-SA-3.0", skip_dirs=("legacy",)),
    Theme("numix", "numix-icon-theme", "Numix", "GPL-3.0-or-later"),
    Theme("yaru", "yaru-theme-icon", "Yaru", "CC-BY-SA-4.0"),
)
INSTALL_HINT = "apt-get install -y --no-install-recommends librsvg2-bin " + " ".join(t.package for t in THEMES)

# icon name -> (category, captions); captions must differ between concepts
CONCEPTS: dict[str, tuple[str, tuple[str, ...]]] = {
    # devices
    "audio-headphones": ("devices", ("audio headphones", "headphones")),
    "audio-headset": ("devices", ("audio headset", "a headset with a microphone")),
    "audio-input-microphone": ("devices", ("audio input microphone", "a microphone")),
    "audio-speakers": ("devices", ("audio speakers", "a loudspeaker")),
    "battery": ("devices", ("battery", "a battery")),
    "camera-photo": ("devices", ("camera photo", "a photo camera")),
    "camera-video": ("devices", ("camera video", "a video camera")),
    "camera-web": ("devices", ("camera web", "a webcam")),
    "computer": ("devices", ("computer", "a desktop computer")),
    "computer-laptop": ("devices", ("computer laptop", "a laptop")),
    "drive-harddisk": ("devices", ("drive harddisk", "a hard disk drive")),
    "drive-optical": ("devices", ("drive optical", "an optical disc drive")),
    "input-gaming": ("devices", ("input gaming", "a game controller")),
    "input-keyboard": ("devices", ("input keyboard", "a computer keyboard")),
    "input-mouse": ("devices", ("input mouse", "a computer mouse")),
    "input-tablet": ("devices", ("input tablet", "a graphics tablet with a pen")),
    "media-flash": ("devices", ("media flash", "a flash memory card")),
    "media-floppy": ("devices", ("media floppy", "a floppy disk")),
    "media-optical": ("devices", ("media optical", "an optical disc")),
    "media-tape": ("devices", ("media tape", "a tape cassette")),
    "modem": ("devices", ("modem", "a modem")),
    "multimedia-player": ("devices", ("multimedia player", "a portable music player")),
    "phone": ("devices", ("phone", "a mobile phone")),
    "printer": ("devices", ("printer", "a printer")),
    "scanner": ("devices", ("scanner", "a document scanner")),
    "video-display": ("devices", ("video display", "a computer monitor")),
    "pda": ("devices", ("pda", "a handheld computer")),
    "ac-adapter": ("devices", ("ac adapter", "a power plug")),
    "network-wireless": ("devices", ("network wireless", "a wireless signal")),
    # weather and status
    "weather-clear": ("status", ("weather clear", "the sun")),
    "weather-clear-night": ("status", ("weather clear night", "the moon at night")),
    "weather-few-clouds": ("status", ("weather few clouds", "the sun behind a cloud")),
    "weather-overcast": ("status", ("weather overcast", "clouds")),
    "weather-showers": ("status", ("weather showers", "a rain cloud")),
    "weather-snow": ("status", ("weather snow", "a cloud with snowflakes")),
    "weather-storm": ("status", ("weather storm", "a storm cloud with lightning")),
    "weather-fog": ("status", ("weather fog", "fog")),
    "dialog-warning": ("status", ("dialog warning", "a warning sign")),
    "dialog-information": ("status", ("dialog information", "an information sign")),
    "dialog-question": ("status", ("dialog question", "a question mark")),
    "dialog-error": ("status", ("dialog error", "an error sign")),
    "starred": ("status", ("starred", "a star")),
    "security-high": ("status", ("security high", "a shield")),
    "audio-volume-high": ("status", ("audio volume high", "a loudspeaker with sound waves")),
    # applications
    "accessories-calculator": ("apps", ("accessories calculator", "a calculator")),
    "accessories-dictionary": ("apps", ("accessories dictionary", "a dictionary")),
    "accessories-text-editor": ("apps", ("accessories text editor", "a text editor")),
    "internet-web-browser": ("apps", ("internet web browser", "a web browser")),
    "internet-mail": ("apps", ("internet mail", "e-mail")),
    "office-calendar": ("apps", ("office calendar", "a calendar")),
    "preferences-desktop-font": ("apps", ("preferences desktop font", "fonts")),
    "preferences-system-time": ("apps", ("preferences system time", "a clock")),
    "utilities-terminal": ("apps", ("utilities terminal", "a terminal window")),
    "system-users": ("apps", ("system users", "a group of users")),
    "applications-games": ("categories", ("applications games", "games")),
    "applications-graphics": ("categories", ("applications graphics", "graphics")),
    "applications-science": ("categories", ("applications science", "laboratory glassware")),
    "applications-internet": ("categories", ("applications internet", "a globe")),
    "help-browser": ("apps", ("help browser", "help")),
    # places
    "user-trash": ("places", ("user trash", "a trash can")),
    "user-home": ("places", ("user home", "a home folder")),
    "folder": ("places", ("folder", "a folder")),
    "folder-music": ("places", ("folder music", "a music folder")),
    "folder-pictures": ("places", ("folder pictures", "a pictures folder")),
    "folder-download": ("places", ("folder download", "a downloads folder")),
    "folder-videos": ("places", ("folder videos", "a videos folder")),
    "folder-documents": ("places", ("folder documents", "a documents folder")),
    "network-server": ("places", ("network server", "a server")),
    # actions
    "edit-cut": ("actions", ("edit cut", "scissors")),
    "edit-paste": ("actions", ("edit paste", "a clipboard")),
    "edit-find": ("actions", ("edit find", "search")),
    "system-lock-screen": ("actions", ("system lock screen", "lock the screen")),
    "system-shutdown": ("actions", ("system shutdown", "power off")),
    "media-playback-start": ("actions", ("media playback start", "a play button")),
    "media-playback-pause": ("actions", ("media playback pause", "a pause button")),
    "media-record": ("actions", ("media record", "a record button")),
    "media-eject": ("actions", ("media eject", "an eject button")),
    "call-start": ("actions", ("call start", "a telephone handset")),
    "go-home": ("actions", ("go home", "a house")),
    "go-up": ("actions", ("go up", "an arrow pointing up")),
    "go-down": ("actions", ("go down", "an arrow pointing down")),
    "view-refresh": ("actions", ("view refresh", "a circular arrow")),
    "process-stop": ("actions", ("process stop", "stop")),
    # emotes
    "face-smile": ("emotes", ("face smile", "a smiling face")),
    "face-sad": ("emotes", ("face sad", "a sad face")),
    "face-angry": ("emotes", ("face angry", "an angry face")),
    "face-crying": ("emotes", ("face crying", "a crying face")),
    "face-kiss": ("emotes", ("face kiss", "a face blowing a kiss")),
    "face-wink": ("emotes", ("face wink", "a winking face")),
    "face-surprise": ("emotes", ("face surprise", "a surprised face")),
    "face-cool": ("emotes", ("face cool", "a face with sunglasses")),
    "face-angel": ("emotes", ("face angel", "a smiling face with a halo")),
    "face-devilish": ("emotes", ("face devilish", "a devil face with horns")),
    "face-sick": ("emotes", ("face sick", "a sick face")),
    "face-laugh": ("emotes", ("face laugh", "a laughing face")),
    "face-glasses": ("emotes", ("face glasses", "a face with glasses")),
    "face-monkey": ("emotes", ("face monkey", "a monkey face")),
    # file types
    "image-x-generic": ("mimetypes", ("image file", "a picture")),
    "audio-x-generic": ("mimetypes", ("audio file", "music")),
    "video-x-generic": ("mimetypes", ("video file", "a video")),
    "text-x-generic": ("mimetypes", ("text file", "a text document")),
    "package-x-generic": ("mimetypes", ("package", "a package")),
    "x-office-spreadsheet": ("mimetypes", ("office spreadsheet", "a spreadsheet")),
    "x-office-presentation": ("mimetypes", ("office presentation", "a presentation")),
    "x-office-address-book": ("mimetypes", ("office address book", "an address book")),
}

_SIZE_DIR = re.compile(r"(\d+)(?:x\d+)?(@2x)?")


def _nominal_size(parts: tuple[str, ...]) -> int:
    """The icon size a theme folder stands for ("64x64", "48", "256x256@2x"); "scalable" counts as largest."""
    for part in parts:
        if part == "scalable":
            return 10_000
        m = _SIZE_DIR.fullmatch(part)
        if m:
            return int(m.group(1)) * (2 if m.group(2) else 1)
    return 0


def find_icons(theme: Theme, names: set[str] | None = None) -> dict[str, Path]:
    """Icon name -> the best file of ``theme`` for it: the largest drawing (SVG or PNG >= MIN_PNG px),
    never a symbolic (monochrome) variant. Empty when the theme is not installed."""
    root = ICON_ROOT / theme.folder
    names = set(CONCEPTS) if names is None else names
    best: dict[str, tuple[int, bool, str]] = {}
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root).parts
        if "symbolic" in rel or any(s in rel for s in theme.skip_dirs):
            dirs[:] = []
            continue
        dirs.sort()
        for file in sorted(files):
            stem, _, ext = file.rpartition(".")
            if stem not in names or ext not in ("svg", "png"):
                continue
            size = _nominal_size(rel)
            if ext == "png" and size < MIN_PNG:
                continue
            key = (size, ext == "svg", str(Path(folder) / file))
            if stem not in best or key[:2] > best[stem][:2]:
                best[stem] = key
    return {name: Path(entry[2]) for name, entry in best.items()}


def render(path: Path, size: int) -> Image.Image:
    """An icon as a ``size`` x ``size`` RGB picture on white (aspect kept, centred)."""
    img: Image.Image
    if path.suffix == ".svg":
        img = Image.open(io.BytesIO(_svg_to_png(path, size)))
    else:
        img = Image.open(path)
    img = img.convert("RGBA")
    if img.size != (size, size):
        scale = size / max(img.size)
        img = img.resize(
            (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS
        )
    out = Image.new("RGB", (size, size), "white")
    out.paste(img, ((size - img.width) // 2, (size - img.height) // 2), img)
    return out


def _svg_to_png(path: Path, size: int) -> bytes:
    if shutil.which("rsvg-convert"):
        return subprocess.run(
            ["rsvg-convert", "-w", str(size), "-h", str(size), "--keep-aspect-ratio", str(path)],
            check=True,
            capture_output=True,
            timeout=30,
        ).stdout
    try:
        import resvg_py
    except ImportError:
        raise RuntimeError("no SVG renderer: apt-get install -y librsvg2-bin (rsvg-convert)") from None
    data = resvg_py.svg_to_bytes(svg_path=str(path), width=size, height=size)
    return bytes(data)
