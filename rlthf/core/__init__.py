"""The algorithm: numpy and pandas only. Nothing here imports Ray, torch, Flask or anything outside ``core``."""
