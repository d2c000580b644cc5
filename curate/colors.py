"""Background colours by name, and the caption tag that describes each (Danbooru spelling)."""

from __future__ import annotations

from lorakit.errors import UserError

Color = tuple[int, int, int]

NAMED: dict[str, Color] = {
    "white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128),
    "blue": (40, 90, 220), "green": (40, 170, 70), "red": (210, 40, 40),
    "yellow": (240, 210, 40), "pink": (240, 150, 190), "purple": (130, 60, 180),
    "orange": (240, 140, 30), "brown": (120, 80, 40),
}
ALIASES = {"gray": "grey"}

# The training guide: vary solid backgrounds across images and tag each one.
DEFAULT_CYCLE = ("white", "black", "blue", "green", "red")


def parse_color(text: str) -> Color:
    name = ALIASES.get(text.strip().lower(), text.strip().lower())
    if name in NAMED:
        return NAMED[name]
    hexa = name.lstrip("#")
    if len(hexa) == 6 and all(c in "0123456789abcdef" for c in hexa):
        return (int(hexa[0:2], 16), int(hexa[2:4], 16), int(hexa[4:6], 16))
    raise UserError(f"unknown colour {text!r}: use a name ({', '.join(NAMED)}) or #rrggbb")


def background_tag(color: Color) -> str:
    """`white background` etc.: the nearest named colour, since taggers know only those."""
    nearest = min(NAMED, key=lambda n: sum((a - b) ** 2 for a, b in zip(NAMED[n], color)))
    return f"{nearest} background"
