"""The curate stage's tuned defaults, in one place: the command-line layer reads them here
without importing the modules that use them (OpenCV, NumPy), so `--help` stays fast."""

SCAN_THRESHOLD = 1.5  # noise score in grey levels that flags an image; calibrated in tests/test_scan.py
DEDUPE_DISTANCE = 6  # of 64 pHash bits: resized or re-encoded copies sit at 0-4, distinct images above 15
