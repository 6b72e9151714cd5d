"""Utilities at the bottom of the package: the repository's root and file hashes."""
