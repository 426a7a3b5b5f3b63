"""The one way hpo patches Ray: an attribute replaced for the duration of a block, and put back however it ends."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def patched(owner, **replacements):
    """While inside: each named attribute of `owner` (a class or module of Ray's) is its replacement; the
    originals are put back however the block ends. Every patch hpo makes to Ray goes through here."""
    originals = {name: getattr(owner, name) for name in replacements}
    for name, value in replacements.items():
        setattr(owner, name, value)
    try:
        yield
    finally:
        for name, value in originals.items():
            setattr(owner, name, value)
