"""Sphinx extension of topo's documentation: reads topo's plain-text docstrings as reStructuredText, requires a
docstring of every public name, resolves references to names where they are defined, and gives the command-line
reference a parser whose help reads as reStructuredText (:func:`documented_parser`)."""

from __future__ import annotations

import argparse
import importlib
import re
import types

from sphinx.util import logging

_log = logging.getLogger("topo.docs")


def require_docstring(app, what: str, name: str, obj, options, lines: list[str]) -> None:
    """Warn (an error under ``-W``) when a public module, class, function or method has no docstring."""
    short = name.rsplit(".", 1)[-1]
    ours = (getattr(obj, "__name__", "") if what == "module" else getattr(obj, "__module__", None) or "")
    if not ours.startswith("topo") or short.startswith("_") or lines:
        return
    if what in ("module", "class", "function", "method", "exception", "property"):
        _log.warning(f"{what} {name} has no docstring")


#: Section headings of topo's docstrings (a title underlined with dashes), whose entries read ``name: text``.
SECTIONS = ("Parameters", "Attributes", "Returns", "Raises", "Yields", "Examples", "Notes", "References")
_ENTRY = re.compile(r"^([A-Za-z_*][\w*]*(?:, [A-Za-z_*][\w*]*)*): (.*)$")
_CODE = re.compile(r"(``.*?``|`[^`]*`)")


def plain_text(line: str) -> str:
    """Escape what plain text means but reStructuredText reads as markup, outside literals and roles: ``|w|`` (an
    absolute value, not a substitution) and a leading ``*`` as in ``(out, in, *kernel)`` (not emphasis)."""
    parts = _CODE.split(line)
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r"\*(?=[\w.]+[),])", r"\\*", parts[i].replace("|", r"\|"))
    return "".join(parts)


def sections_as_rst(lines: list[str]) -> list[str]:
    """topo's docstring sections as reStructuredText: a heading becomes a rubric, and each ``name: text`` entry
    (continued on lines indented by four) a definition list item, so the rendered page lists parameters,
    attributes, returns and raised errors."""
    out: list[str] = []
    i, in_section = 0, False
    while i < len(lines):
        line = lines[i]
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() in SECTIONS and following.strip() and set(following.strip()) == {"-"}:
            out += [f".. rubric:: {line.strip()}", ""]
            in_section, i = True, i + 2
            continue
        if not line.strip():
            in_section = False
        entry = _ENTRY.match(line) if in_section else None
        if entry:
            out += [entry.group(1).replace("*", r"\*"), "    " + plain_text(entry.group(2))]
            i += 1
            while i < len(lines) and lines[i].startswith("    "):
                out.append("    " + plain_text(lines[i].strip()))
                i += 1
            continue
        out.append(plain_text(line))
        i += 1
    return out


def render_docstring(app, what: str, name: str, obj, options, lines: list[str]) -> None:
    """Read topo's plain-text docstrings as reStructuredText (:func:`sections_as_rst`, :func:`plain_text`)."""
    lines[:] = sections_as_rst(lines)


def find_object(dotted: str):
    """The object a dotted name names (a module, or attributes of one), or None."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attribute in parts[cut:]:
                obj = getattr(obj, attribute)
        except AttributeError:
            return None
        return obj
    return None


def documented_name(target: str, module: str | None, cls: str | None) -> list[str]:
    """Where a reference may be documented: names are documented where they are defined, so a name re-exported by
    a package (``topo.graph.metrics_table``) or imported into the referring module (``ConfigError``) is looked up
    at its definition; a name autodoc does not document (an instance attribute, an undocumented constant) falls
    back to its class or module."""
    scopes = [f"{module}.{cls}.{target}" if module and cls else None, f"{module}.{target}" if module else None, target]
    for dotted in filter(None, scopes):
        obj = find_object(dotted)
        if obj is None:
            owner = find_object(dotted.rsplit(".", 1)[0]) if "." in dotted else None
            if isinstance(owner, type):  # an instance attribute or a dataclass field: its class documents it
                return [f"{owner.__module__}.{owner.__qualname__}"]
            continue
        if isinstance(obj, types.ModuleType):
            return [obj.__name__]
        defined = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        names = [f"{defined[0]}.{defined[1]}"] if all(defined) else []
        parent = dotted.rsplit(".", 1)[0]
        owner = find_object(parent)
        if isinstance(owner, type):
            names.append(f"{owner.__module__}.{owner.__qualname__}")
        elif isinstance(owner, types.ModuleType):
            names.append(owner.__name__)
        return names
    return []


def resolve_topo_reference(app, env, node, contnode):
    """Resolve a Python reference to a topo name at the place :func:`documented_name` finds (nitpicky builds
    report the rest)."""
    if node.get("refdomain") != "py":
        return None
    domain = env.get_domain("py")
    for name in documented_name(node["reftarget"], node.get("py:module"), node.get("py:class")):
        for role in ("obj", "mod"):
            found = domain.resolve_xref(env, node["refdoc"], app.builder, role, name, node, contnode)
            if found is not None:
                return found
    return None


def factory_defaults(app, what, name, obj, options, signature, return_annotation):
    """Show a dataclass field's ``default_factory`` as ``...``: ``inspect`` renders it ``<factory>``, which the
    signature parser cannot read (sphinx-doc/sphinx#14532)."""
    if signature and "<factory>" in signature:
        return signature.replace("<factory>", "..."), return_annotation
    return None


def documented_parser() -> argparse.ArgumentParser:
    """``topo``'s argument parser (:func:`topo.cli.build_parser`) with every help and description text escaped:
    sphinx-argparse reads them as reStructuredText, and they are plain text (``'lstm.weight_hh*'``, ``|w|``)."""
    from topo.cli import build_parser

    def literal(text: str | None) -> str | None:
        return text and re.sub(r"([*|`_\\])", r"\\\1", text)

    def escape(parser: argparse.ArgumentParser) -> None:
        parser.description = literal(parser.description)
        for action in parser._actions:
            if action.help and action.help is not argparse.SUPPRESS:
                action.help = literal(action.help)
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    choice.help = literal(choice.help)
                for sub in action.choices.values():
                    escape(sub)

    parser = build_parser()
    escape(parser)
    return parser


def setup(app) -> dict:
    app.connect("autodoc-process-signature", factory_defaults)
    app.connect("missing-reference", resolve_topo_reference)
    app.connect("autodoc-process-docstring", require_docstring)
    app.connect("autodoc-process-docstring", render_docstring)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
