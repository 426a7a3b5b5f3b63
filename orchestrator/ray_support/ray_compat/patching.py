"""The one way hpo patches Ray: an attribute replaced for the duration of a block, and put back however it ends.

Each replacement that is a function is wrapped so that every call Ray makes into it is counted in CALLS, under
"<owner>.<name>". tests/test_ray_compat.py's live tests read the counts after a real start, a real run, a real
failure: a Ray that stopped calling a patched function (renamed it, inlined it, moved the call) leaves its count
at 0 and fails there by name, where a stub test would still pass.
"""

from __future__ import annotations

import collections
import contextlib
import functools

CALLS: collections.Counter[str] = (
    collections.Counter()
)  # "<owner>.<name>" -> calls Ray made into our replacement
_ABSENT = object()


def patch_key(owner, name: str) -> str:
    """How CALLS names the patch of `owner.name`: a class by its qualified name, a module or object by its own."""
    if isinstance(owner, type):
        return f"{owner.__qualname__}.{name}"
    return f"{getattr(owner, '__name__', type(owner).__qualname__)}.{name}"


def counted(key: str, fn):
    """`fn`, counting its calls in CALLS[key] (a plain function still, so it binds as a method does)."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        CALLS[key] += 1
        return fn(*args, **kwargs)

    return call


@contextlib.contextmanager
def patched(owner, **replacements):
    """While inside: each named attribute of `owner` (a class, module or object of Ray's) is its replacement
    (counted, if a function); the originals are put back however the block ends: an attribute `owner` held
    itself is set back, one it only inherited (a class's method from its base, an instance's from its class) is
    removed again. Every patch hpo makes to Ray goes through here."""
    own = vars(owner)
    originals = {name: own.get(name, _ABSENT) for name in replacements}
    for name, value in replacements.items():
        setattr(owner, name, counted(patch_key(owner, name), value) if callable(value) else value)
    try:
        yield
    finally:
        for name, value in originals.items():
            if value is _ABSENT:
                delattr(owner, name)
            else:
                setattr(owner, name, value)


def until_undone(block):
    """Enter the `patched` block now; returns its undo (leaving it): for a patch that lives from one call (a
    session's start) to another (its end) rather than around one block."""
    stack = contextlib.ExitStack()
    stack.enter_context(block)
    return stack.close
