"""The library's progress bars (tqdm), off wherever ``TQDM_DISABLE`` is set.

The book's runner (:mod:`headflow.book.runner`) sets it inside every executed chapter, so the
published notebooks keep no progress-bar output; the terminal shows one line per chapter instead.
Interactively a bar shows unless the caller passes ``show=False``.
"""
from __future__ import annotations

import os

from tqdm.auto import tqdm

from headflow.util import threads


def off() -> bool:
    """Whether progress bars are switched off (``TQDM_DISABLE`` set to anything but ``0``/``false``)."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false")


class _Bar(tqdm):
    """A tqdm bar that, at every step, follows the thread budget the book runner sets
    (``headflow.util.threads.follow``)."""

    def __iter__(self):
        for item in super().__iter__():
            threads.follow()
            yield item

    def update(self, n=1):
        threads.follow()
        return super().update(n)


def bar(iterable=None, *, show: bool = True, **kwargs):
    """``tqdm(iterable, **kwargs)``, shown unless ``show`` is False or :func:`off`; each step follows
    the runner's thread budget (``headflow.util.threads``)."""
    return _Bar(iterable, disable=not show or off(), **kwargs)


def write(text: str) -> None:
    """Print one line without breaking a bar that is showing."""
    tqdm.write(text)
