"""Bounded parsing of bytes that come from a device, a socket or a user's file: JSON and YAML with limits.

Every reader of outside input goes through here, so each has the same bounds: size, nesting depth, YAML
nodes (an alias bomb of under 1 KB expands to billions), UTF-8 only, and duplicate keys refused (the last value
would otherwise win silently). Failures are :class:`ParseError` (a ``ValueError``) with one line naming what is
wrong; callers add the file or topic and turn it into their own :class:`~edgekit.errors.EdgekitError`.
See docs/errors.md.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import yaml

__all__ = [
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_NUMBER_DIGITS",
    "MAX_YAML_NODES",
    "ParseError",
    "check_depth",
    "decode_utf8",
    "loads_json",
    "loads_yaml",
    "parse_host_port",
]

MAX_DEPTH: Final = 64
"""Deepest nesting accepted (objects and arrays); real recipes, manifests and payloads stay under 10."""
MAX_YAML_NODES: Final = 200_000
"""Items a YAML document may expand to, aliases included (a billion-laughs document is stopped here)."""
MAX_FILE_BYTES: Final = 16 * 1024 * 1024
"""Largest recipe, profile, fleet file, pipeline or deployment spec read (real ones are a few KB)."""


MAX_NUMBER_DIGITS: Final = 1000
"""Longest number accepted, in characters (Python itself refuses an int of over 4,300 digits with a plain
``ValueError``, and converting a long one costs quadratic time); real documents stay under 20."""


class ParseError(ValueError):
    """Input that can't be parsed within the bounds; the message is one line."""


def decode_utf8(data: bytes | str) -> str:
    """``data`` as text; bytes must be UTF-8 (a BOM is dropped)."""
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ParseError(f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); save it as UTF-8") from None


def check_depth(value: Any, max_depth: int = MAX_DEPTH, max_items: int | None = None) -> Any:
    """``value`` if no list or dict in it is nested deeper than ``max_depth`` and, walked out in full (YAML aliases
    share objects), it holds at most ``max_items`` items; checked without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > max_depth:
            raise ParseError(f"is nested deeper than {max_depth} levels")
        seen += len(children)
        if max_items is not None and seen > max_items:
            raise ParseError(f"expands to more than {max_items} items (YAML aliases included); is it an alias bomb?")
        stack.extend((child, depth + 1) for child in children)
    return value


def _line_of(text: str, key: str, nth: int) -> int | None:
    hits = [m.start() for m in re.finditer(re.escape(json.dumps(key)) + r"\s*:", text)]
    return text.count("\n", 0, hits[nth]) + 1 if len(hits) > nth else None


def loads_json(
    data: bytes | str,
    *,
    max_bytes: int | None = None,
    max_depth: int = MAX_DEPTH,
    duplicate_keys: bool = False,
    fold_keys: Callable[[str], str] | None = None,
) -> Any:
    """Parse JSON within the bounds; duplicate keys in one object (after ``fold_keys``, e.g. ``str.lower``) are
    refused unless ``duplicate_keys``."""
    if max_bytes is not None and len(data) > max_bytes:
        raise ParseError(f"is {len(data)} bytes, over the {max_bytes}-byte limit")
    text = decode_utf8(data)

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        folded: dict[str, str] = {}
        for key, value in items:
            fold = fold_keys(key) if fold_keys is not None else key
            if fold in folded and not duplicate_keys:
                first = folded[fold]
                lines = [_line_of(text, first, 0), _line_of(text, key, 1 if first == key else 0)]
                where = f" (lines {lines[0]} and {lines[1]})" if None not in lines else ""
                same = "" if first == key else f" ('{first}' and '{key}' differ only in case)"
                raise ParseError(f"has the key '{key}' twice in one object{where}{same}; keep one")
            folded[fold] = key
            out[key] = value
        return out

    try:
        value = json.loads(text, object_pairs_hook=pairs, parse_int=_bounded_int, parse_float=_bounded_float)
    except RecursionError:
        raise ParseError(f"is nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise ParseError(f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    return check_depth(value, max_depth)


def _long_number(text: str) -> ParseError:
    return ParseError(f"has a number of {len(text)} characters ('{text[:20]}...'), over the {MAX_NUMBER_DIGITS}-character limit")


def _bounded_int(text: str) -> int:
    if len(text) > MAX_NUMBER_DIGITS:
        raise _long_number(text)
    return int(text)


def _bounded_float(text: str) -> float:
    if len(text) > MAX_NUMBER_DIGITS:
        raise _long_number(text)
    value = float(text)
    if math.isinf(value):
        raise ParseError(f"has the number {text[:40]}, too large for a 64-bit float")
    return value


@functools.cache
def _bounded_loader(base: type[yaml.SafeLoader] | None, fold_keys: Callable[[str], str] | None) -> type[yaml.SafeLoader]:
    """A SafeLoader (``base``'s resolvers) that refuses duplicate keys, after ``fold_keys`` when given.

    Aliases share objects, so loading an alias bomb is cheap; :func:`check_depth` bounds its expansion.
    """
    import yaml

    class Loader(base or yaml.SafeLoader):  # type: ignore[misc]
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, yaml.Node] = {}
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep=True)
                    folded = fold_keys(key) if fold_keys is not None and isinstance(key, str) else key
                    try:
                        first = seen.get(folded)
                    except TypeError:  # an unhashable key: SafeConstructor says so below
                        continue
                    if first is not None:
                        a, b = first.start_mark.line + 1, key_node.start_mark.line + 1
                        same = (
                            ""
                            if first.value == key_node.value
                            else f" ('{first.value}' and '{key_node.value}' differ only in case)"
                        )
                        raise ParseError(
                            f"has the key '{key_node.value}' twice in one mapping (lines {a} and {b}){same}; keep one"
                        )
                    seen[folded] = key_node
            return super().construct_mapping(node, deep)  # type: ignore[no-any-return]

    def construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
        if len(str(node.value)) > MAX_NUMBER_DIGITS:
            raise _long_number(str(node.value))
        return yaml.SafeLoader.construct_yaml_int(loader, node)

    def construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
        text = str(node.value)
        if len(text) > MAX_NUMBER_DIGITS:
            raise _long_number(text)
        value = yaml.SafeLoader.construct_yaml_float(loader, node)
        if math.isinf(value) and "inf" not in text.lower():  # .inf is YAML's infinity; 1e999 overflows
            raise ParseError(f"has the number {text[:40]}, too large for a 64-bit float")
        return value

    Loader.add_constructor("tag:yaml.org,2002:int", construct_int)
    Loader.add_constructor("tag:yaml.org,2002:float", construct_float)
    return Loader


def loads_yaml(
    data: bytes | str,
    *,
    max_bytes: int | None = None,
    max_depth: int = MAX_DEPTH,
    max_nodes: int = MAX_YAML_NODES,
    loader: type[yaml.SafeLoader] | None = None,
    fold_keys: Callable[[str], str] | None = None,
) -> Any:
    """Parse YAML (safe tags only) within the bounds; duplicate keys refused (``fold_keys``: after folding them).

    ``loader``: a SafeLoader subclass whose resolvers to use (e.g. one that keeps dates as text).
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise ParseError(f"is {len(data)} bytes, over the {max_bytes}-byte limit")
    import yaml

    text = decode_utf8(data)
    bounded = _bounded_loader(loader, fold_keys)  # type: ignore[arg-type]  # classes and functions hash by identity
    try:
        value = yaml.load(text, Loader=bounded)
    except RecursionError:
        raise ParseError(f"is nested deeper than {max_depth} levels") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ParseError(f"is not valid YAML: {problem}{where}") from None
    return check_depth(value, max_depth, max_nodes)


def parse_host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as (host, port), or a :class:`ParseError` saying the form."""
    host, sep, port = value.strip().rpartition(":")
    host = host.strip().removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ParseError(f"{value!r}: expected HOST:PORT, e.g. 192.168.1.10:9190")
    return host, int(port)
