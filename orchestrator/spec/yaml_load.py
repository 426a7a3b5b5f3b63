"""A YAML loader for job specs that refuses what a spec never needs.

PyYAML's SafeLoader still expands aliases (a "billion laughs" file of a few hundred bytes becomes gigabytes),
silently keeps the last of two duplicate keys, and reads `1e-4` as a string (YAML 1.1 wants a dot). Specs are
small, hand-written mappings, so we reject aliases, duplicate keys, deep nesting and big files outright, and
read YAML 1.2 floats.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

MAX_BYTES = 256 * 1024
MAX_DEPTH = 16


class YamlError(ValueError):
    """The file is not a job spec we are willing to read; the message says why in one line."""


class _SpecLoader(yaml.SafeLoader):
    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise YamlError(
                f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not allowed in a job spec;"
                " write the value out"
            )
        self._depth += 1
        if self._depth > MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise YamlError(
                f"line {mark.line + 1}: nested deeper than {MAX_DEPTH} levels; a job spec never is"
            )
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise YamlError(f"line {key_node.start_mark.line + 1}: key {key!r} must be a string")
            if key in seen:
                raise YamlError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 floats: 1e-4, 1.0E+3, .5, -2.5e-3 (YAML 1.1 reads exponents without a dot as strings).
_FLOAT_RE = re.compile(
    r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+"
    r"|\.(?:inf|Inf|INF)|[-+]\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_SpecLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first in "-+0123456789.":
    _SpecLoader.yaml_implicit_resolvers[_first] = [
        (tag, rx)
        for tag, rx in _SpecLoader.yaml_implicit_resolvers.get(_first, [])
        if tag != "tag:yaml.org,2002:float"
    ]
_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def load_yaml_text(data: bytes | str) -> Any:
    """Parse one YAML document of a job spec, raising YamlError with a one-line reason."""
    if isinstance(data, bytes):
        if len(data) > MAX_BYTES:
            raise YamlError(f"file is {len(data)} bytes; a job spec is at most {MAX_BYTES}")
        if b"\x00" in data:
            raise YamlError("file is binary, not YAML text")
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise YamlError(f"file is not UTF-8 text (byte {exc.start})") from None
    try:
        docs = list(yaml.load_all(data, Loader=_SpecLoader))
    except YamlError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise YamlError(f"not valid YAML: {where}{exc.problem}") from None
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        raise YamlError(
            f"not valid YAML: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    if len(docs) > 1:
        raise YamlError("holds several YAML documents (---); a job spec is one")
    return docs[0] if docs else None
