"""Normalised AST: signatures and body hashes that ignore docstrings, comments and formatting; small helpers."""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

# ----------------------------------------------------------------------------------------------------------------
# Normalised AST: signatures and body hashes
# ----------------------------------------------------------------------------------------------------------------
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def canonical_dump(node: Any) -> str:
    """``ast.dump`` without positions and docstrings, in a form that does not depend on the Python version.

    Like ``ast.dump(node, annotate_fields=False, include_attributes=False)`` but: docstrings (the first string
    statement of a function or class, nested ones too) are left out, and so are ``None`` and empty-list fields.
    ``ast.dump``'s own text changes with the Python version (3.13 omits empty fields, 3.12 added an empty
    ``type_params`` to every def), which would make every stored hash differ for a maintainer on another Python.
    """
    if isinstance(node, ast.AST):
        parts = []
        for name in node._fields:
            value = getattr(node, name, None)
            if name == "body" and isinstance(node, _SCOPES) and value and _is_docstring(value[0]):
                value = value[1:] or [ast.Pass()]
            if value is None or (isinstance(value, list) and not value):
                continue
            parts.append(f"{name}={canonical_dump(value)}")
        return f"{type(node).__name__}({','.join(parts)})"
    if isinstance(node, list):
        return "[" + ",".join(canonical_dump(item) for item in node) + "]"
    return repr(node)


def _sha256(parts: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def body_hash(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """sha256 of a function's decorators and body (:func:`canonical_dump`, so docstrings, comments and formatting
    do not count).

    The signature is fingerprinted separately (:func:`render_signature`) so that a report can say which of the two
    changed; annotations are in neither, since they do not change what the code does.
    """
    body = (node.body[1:] or [ast.Pass()]) if node.body and _is_docstring(node.body[0]) else node.body
    return _sha256(canonical_dump(item) for item in [*node.decorator_list, *body])


def statements_hash(nodes: Iterable[ast.AST]) -> str:
    """sha256 of a sequence of statements or expressions, in the given order."""
    return _sha256(canonical_dump(node) for node in nodes)


_PARSED: dict[bytes, ast.Module] = {}


def _parse(path: Path) -> ast.Module:
    """Parse a file, reusing the tree of identical content (a check parses the same files several times, and a
    copy of TRL with one file edited shares the rest). The trees are only read, never modified."""
    data = path.read_bytes()
    key = hashlib.sha256(data).digest()
    if key not in _PARSED:
        _PARSED[key] = ast.parse(data, str(path))
    return _PARSED[key]


def render_signature(args: ast.arguments) -> str:
    """A ``def``'s parameters as text: names, defaults (unparsed), ``/``, ``*``, ``*args``, ``**kwargs``; no
    annotations."""

    def one(arg: ast.arg, default: ast.expr | None) -> str:
        return arg.arg if default is None else f"{arg.arg}={ast.unparse(default)}"

    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    parts = []
    for index, (arg, default) in enumerate(zip(positional, defaults)):
        parts.append(one(arg, default))
        if args.posonlyargs and index == len(args.posonlyargs) - 1:
            parts.append("/")
    if args.vararg is not None:
        parts.append(f"*{args.vararg.arg}")
    elif args.kwonlyargs:
        parts.append("*")
    parts.extend(one(arg, default) for arg, default in zip(args.kwonlyargs, args.kw_defaults))
    if args.kwarg is not None:
        parts.append(f"**{args.kwarg.arg}")
    return f"({', '.join(parts)})"


def _top_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Module-level statements, looking into ``if`` / ``try`` / ``with`` blocks (``if TYPE_CHECKING:`` imports)."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, ast.If):
            yield from _top_level(stmt.body)
            yield from _top_level(stmt.orelse)
        elif isinstance(stmt, ast.Try):
            yield from _top_level(stmt.body)
            for handler in stmt.handlers:
                yield from _top_level(handler.body)
            yield from _top_level(stmt.orelse)
            yield from _top_level(stmt.finalbody)
        elif isinstance(stmt, ast.With):
            yield from _top_level(stmt.body)


def _target_names(target: ast.expr) -> Iterator[ast.expr]:
    """Flatten tuple/list/starred assignment targets."""
    if isinstance(target, (ast.Tuple, ast.List)):
        for element in target.elts:
            yield from _target_names(element)
    elif isinstance(target, ast.Starred):
        yield from _target_names(target.value)
    else:
        yield target


def _assign_targets(stmt: ast.AST) -> list[ast.expr]:
    if isinstance(stmt, ast.Assign):
        return [name for target in stmt.targets for name in _target_names(target)]
    if isinstance(stmt, (ast.AugAssign, ast.AnnAssign)):
        return list(_target_names(stmt.target))
    return []


def _last_segment(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _is_self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == "self"


def _string(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _walk_functions(node: ast.ClassDef) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield item


def _is_dataclass(node: ast.ClassDef) -> bool:
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if _last_segment(target) == "dataclass":
            return True
    return False
