"""XStream-like element trees rendered as XML or as Mirth's staxon JSON (autoArray + autoPrimitive).

Staxon rules the emulator must reproduce: the root element is the top key; repeated sibling elements become an
array but a single one stays an object; an empty element is null (`{"list":null}`); attributes are `"@name"`;
text that looks like a number or boolean becomes one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape, quoteattr

_NUMBER = re.compile(r"^-?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?$")


@dataclass
class El:
    tag: str
    children: list[El] = field(default_factory=list)
    text: str | None = None
    attrs: dict[str, str] = field(default_factory=dict)


def el(tag: str, *children: El | None, text: object = None, **attrs: str) -> El:
    return El(tag, [c for c in children if c is not None], None if text is None else _str(text), dict(attrs))


def leaf(tag: str, value: object) -> El:
    return El(tag, text=_str(value))


def _str(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _primitive(text: str) -> Any:
    if text in ("true", "false"):
        return text == "true"
    if _NUMBER.match(text):
        return float(text) if any(c in text for c in ".eE") else int(text)
    return text


def _value(node: El) -> Any:
    attrs: dict[str, Any] = {f"@{k}": _primitive(v) for k, v in node.attrs.items()}
    if node.children:
        groups: dict[str, list[Any]] = {}
        for child in node.children:
            groups.setdefault(child.tag, []).append(_value(child))
        return attrs | {k: v[0] if len(v) == 1 else v for k, v in groups.items()}
    if node.text is None or node.text == "":
        return attrs or None
    return attrs | {"$": _primitive(node.text)} if attrs else _primitive(node.text)


def to_json(node: El) -> dict[str, Any]:
    return {node.tag: _value(node)}


def to_xml(node: El, indent: int = 0) -> str:
    pad = "  " * indent
    attrs = "".join(f" {k}={quoteattr(v)}" for k, v in node.attrs.items())
    if node.children:
        inner = "\n".join(to_xml(c, indent + 1) for c in node.children)
        return f"{pad}<{node.tag}{attrs}>\n{inner}\n{pad}</{node.tag}>"
    if node.text is None or node.text == "":
        return f"{pad}<{node.tag}{attrs}/>"
    return f"{pad}<{node.tag}{attrs}>{escape(node.text)}</{node.tag}>"
