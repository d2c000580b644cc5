"""The tagger's thresholds, in one place (SmilingWolf's reference app: general tags above 0.35,
characters above 0.85; with MCut, characters at least 0.15). A model with thresholds of its own
on its model card (tagging/models.py) uses those instead."""

GENERAL = 0.35
CHARACTER = 0.85
MCUT_CHARACTER_FLOOR = 0.15
