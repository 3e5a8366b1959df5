"""Per-route transforms: the declarative step language, code tables, plugins, and the pure engine that runs them."""

from interop.transform.engine import StepResult, TransformError, TransformOutcome, holds, render_template, run_steps
from interop.transform.message import MutableMessage, MutableSegment
from interop.transform.plugins import GROUP, Filter, PluginNotFound, installed_plugins, load_plugin
from interop.transform.steps import CodeTable, FieldTest, Step, parse_csv_table

__all__ = [
    "GROUP", "CodeTable", "FieldTest", "Filter", "MutableMessage", "MutableSegment", "PluginNotFound", "Step",
    "StepResult", "TransformError", "TransformOutcome", "holds", "installed_plugins", "load_plugin",
    "parse_csv_table", "render_template", "run_steps",
]
