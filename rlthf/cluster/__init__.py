"""The Ray shell, kept apart from the algorithm: starting Ray, Ray Train fits, Ray Data actor pools."""
