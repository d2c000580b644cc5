"""Data files that ship with lorakit (curated tag lists, equivalence tables)."""
