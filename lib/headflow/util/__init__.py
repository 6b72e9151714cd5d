"""Utilities at the bottom of the package: the repository's root, file hashes, moving data to a device and back."""
