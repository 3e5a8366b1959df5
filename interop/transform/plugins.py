"""Transform plugins: Python functions registered under the entry-point group ``lifeline.transforms``.

A plugin is ``def plugin(message: MutableMessage, options: dict[str, Any]) -> None``: it edits the message in place,
raises :class:`Filter` to filter the message for the route, or raises anything else to fail the step.
Register one in the package's pyproject.toml::

    [project.entry-points."lifeline.transforms"]
    normalise-mrn = "my_hospital.lifeline_plugins:normalise_mrn"
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from interop.transform.message import MutableMessage

GROUP = "lifeline.transforms"
PluginFn = Callable[["MutableMessage", dict[str, Any]], None]
_loaded: dict[str, PluginFn] = {}


class Filter(Exception):  # noqa: N818 - raised by plugins to say "filter this message", not an error
    """Raised by a plugin (or a filter step) to filter the message for this route, with a reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PluginNotFound(LookupError):
    pass


def installed_plugins() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=GROUP)})


def load_plugin(name: str) -> PluginFn:
    """The function registered under `name` (loaded once per process)."""
    fn = _loaded.get(name)
    if fn is not None:
        return fn
    found = list(entry_points(group=GROUP).select(name=name))
    if not found:
        raise PluginNotFound(f"no plugin named {name!r} is installed (entry-point group {GROUP})")
    loaded = found[0].load()
    if not callable(loaded):
        raise PluginNotFound(f"plugin {name!r} ({found[0].value}) is not a function")
    _loaded[name] = loaded
    return loaded  # type: ignore[no-any-return]


def forget_plugins() -> None:
    """Drop loaded plugins (tests, or after installing a new version)."""
    _loaded.clear()
