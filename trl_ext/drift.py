"""Drift detector for the TRL internals that trl-ext touches.

trl-ext subclasses ``trl.GRPOTrainer`` and reaches into its private methods, attributes and batch dict. TRL changes
those between minor releases without notice, and a changed body that we wrap or re-implement breaks us silently
(parity drifts, a patch stops applying). This module makes that contact surface explicit and checkable:

* :func:`scan_inventory` **generates** the inventory from trl-ext's own source (``ast``, nothing hand-kept), so a new
  override, call, import, attribute read, batch-key read or patch shows up without anyone remembering to list it.
* :class:`TrlSource` **fingerprints** each touched TRL symbol from TRL's source files (never importing TRL): a
  method's signature and a hash of its normalised body (docstrings, comments and formatting do not count).
* ``trl_ext/trl_fingerprints/<version>.json`` stores the fingerprints that were reviewed for each supported TRL
  version; :func:`check` compares the installed (or a given) TRL against them.

CLI: ``python -m trl_ext.drift {inventory,check,report,record}``; see ``docs/maintaining.md``.

Only the standard library is imported here: the check runs before (and without) torch and TRL being importable.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.metadata
import importlib.util
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CATEGORIES",
    "CheckResult",
    "Finding",
    "Inventory",
    "TrlSource",
    "check",
    "default_trl_root",
    "main",
    "record",
    "scan_inventory",
]

CATEGORIES = ("overrides", "calls", "imports", "attributes", "batch_keys", "writes")
PACKAGE_ROOT = Path(__file__).resolve().parent
FINGERPRINTS_DIR = PACKAGE_ROOT / "trl_fingerprints"
RECORD_COMMAND = "python -m trl_ext.drift record"

#: TRL classes whose instances trl-ext handles, and where TRL defines them.
TRL_CLASSES = {
    "GRPOTrainer": "trl.trainer.grpo_trainer",
    "VLLMGeneration": "trl.generation.vllm_generation",
    "VLLMClient": "trl.generation.vllm_client",
}
TRAINER = "GRPOTrainer"
#: Receiver names (the last segment of the receiver expression) taken to be a TRL object of that class.
GENERATION_RECEIVERS = frozenset({"vllm_generation", "generation"})
CLIENT_RECEIVERS = frozenset({"vllm_client"})
#: Receivers (as source text) taken to be TRL's batch dict (what ``_generate_and_score_completions`` returns).
BATCH_RECEIVERS = frozenset({"inputs", "output", "batch", "ctx.inputs"})
BATCH_METHOD = "_generate_and_score_completions"


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


# ----------------------------------------------------------------------------------------------------------------
# TRL's source
# ----------------------------------------------------------------------------------------------------------------
def default_trl_root() -> Path:
    """The installed ``trl`` package directory, found without importing TRL."""
    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("TRL is not installed here; pass --trl-root DIR (the directory of TRL's package)")
    return Path(list(spec.submodule_search_locations)[0])


@dataclass
class Resolved:
    """Where a TRL name is defined: ``kind`` is function, class, module, unresolved (bound to something that is not
    a def, e.g. an assignment or a third-party import) or missing."""

    kind: str
    module: str
    node: ast.AST | None = None
    bindings: list[ast.stmt] = field(default_factory=list)


@dataclass
class _Member:
    owner: str  # dotted: trl.trainer.base_trainer._BaseTrainer
    node: ast.FunctionDef | ast.AsyncFunctionDef


class TrlSource:
    """TRL's package source under ``root`` (the directory holding TRL's ``__init__.py``), parsed on demand.

    Only ``ast`` is used: fingerprints of a TRL that is not installed (an unpacked wheel) or that cannot be imported
    here (no torch) are computed the same way.
    """

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_trl_root()
        if not (self.root / "__init__.py").is_file():
            raise FileNotFoundError(f"{self.root} is not TRL's package directory (no __init__.py)")
        self._trees: dict[str, ast.Module | None] = {}
        self._mro: dict[str, list[tuple[str, ast.ClassDef]]] = {}
        self._methods: dict[str, dict[str, _Member]] = {}
        self._attributes: dict[str, dict[str, list[tuple[str, ast.stmt]]]] = {}
        self._use_index: dict[str, tuple[dict[str, set[str]], dict[str, set[str]]]] = {}
        self._batch_keys: dict[str, list[ast.expr]] | None = None

    # -- files --------------------------------------------------------------------------------------------------
    def module_file(self, module: str) -> Path | None:
        parts = module.split(".")
        if parts[0] != "trl":
            return None
        base = self.root.joinpath(*parts[1:])
        candidates = [base / "__init__.py"] + ([base.with_suffix(".py")] if len(parts) > 1 else [])
        return next((path for path in candidates if path.is_file()), None)

    def tree(self, module: str) -> ast.Module | None:
        if module not in self._trees:
            path = self.module_file(module)
            self._trees[module] = _parse(path) if path else None
        return self._trees[module]

    def version(self) -> str | None:
        """TRL's version without importing it: a literal ``__version__``, else the ``trl-*.dist-info`` beside the
        package (installed packages and unpacked wheels have one)."""
        for stmt in _top_level(self.tree("trl").body):  # type: ignore[union-attr]
            if any(isinstance(t, ast.Name) and t.id == "__version__" for t in _assign_targets(stmt)):
                literal = _string(getattr(stmt, "value", None))
                if literal and re.match(r"\d+\.\d+", literal):  # not a fallback such as "unknown"
                    return literal
        infos = sorted(self.root.parent.glob("trl-*.dist-info"))
        if len(infos) == 1 and (infos[0] / "METADATA").is_file():
            match = re.search(r"^Version:\s*(\S+)", (infos[0] / "METADATA").read_text(encoding="utf-8"), re.M)
            if match:
                return match.group(1)
        try:
            if self.root.resolve() == default_trl_root().resolve():
                return importlib.metadata.version("trl")
        except (FileNotFoundError, importlib.metadata.PackageNotFoundError):
            pass
        return None

    # -- name resolution ----------------------------------------------------------------------------------------
    @staticmethod
    def _absolute(module: str, stmt: ast.ImportFrom, is_package: bool) -> str:
        if not stmt.level:
            return stmt.module or ""
        parts = module.split(".")
        keep = len(parts) - stmt.level + (1 if is_package else 0)
        base = ".".join(parts[:keep])
        return f"{base}.{stmt.module}" if stmt.module else base

    def is_package(self, module: str) -> bool:
        path = self.module_file(module)
        return path is not None and path.name == "__init__.py"

    def resolve(self, module: str, name: str, _seen: frozenset[tuple[str, str]] = frozenset()) -> Resolved:
        """Find the definition of ``module.name``, following re-exports (``from .x import y``, including those under
        ``if TYPE_CHECKING:``) and TRL's lazy ``_import_structure`` tables; a submodule resolves as a module."""
        if (module, name) in _seen:
            return Resolved("unresolved", module)
        seen = _seen | {(module, name)}
        tree = self.tree(module)
        if tree is None:
            return Resolved("missing", module)
        package = self.is_package(module)
        defs: list[ast.stmt] = []
        bindings: list[tuple[ast.stmt, ast.alias | None]] = []
        structure: dict[str, list[str]] = {}
        for stmt in _top_level(tree.body):
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and stmt.name == name:
                defs.append(stmt)
            elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
                for alias in stmt.names:
                    bound = alias.asname or alias.name.split(".")[0]
                    if bound == name:
                        bindings.append((stmt, alias))
            else:
                targets = _assign_targets(stmt)
                if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                    bindings.append((stmt, None))
                if any(isinstance(t, ast.Name) and t.id == "_import_structure" for t in targets):
                    value = getattr(stmt, "value", None)
                    if isinstance(value, ast.Dict):
                        for key, names in zip(value.keys, value.values):
                            if _string(key) is not None and isinstance(names, (ast.List, ast.Tuple)):
                                structure.setdefault(_string(key), []).extend(  # type: ignore[arg-type]
                                    _string(n) for n in names.elts if _string(n)
                                )
        if defs:
            node = defs[-1]
            return Resolved("class" if isinstance(node, ast.ClassDef) else "function", module, node)
        external: list[ast.stmt] = []
        for stmt, alias in bindings:
            if isinstance(stmt, ast.ImportFrom) and alias is not None:
                target = self._absolute(module, stmt, package)
                if target == "trl" or target.startswith("trl."):
                    found = self.resolve(target, alias.name, seen)
                    if found.kind != "missing":
                        return found
            elif isinstance(stmt, ast.Import) and alias is not None and alias.asname and alias.name.startswith("trl"):
                if self.module_file(alias.name):
                    return Resolved("module", alias.name)
            external.append(stmt)
        for submodule, names in structure.items():
            if name in names:
                found = self.resolve(f"{module}.{submodule}", name, seen)
                if found.kind != "missing":
                    return found
        if external:
            return Resolved("unresolved", module, bindings=external)
        if self.module_file(f"{module}.{name}"):
            return Resolved("module", f"{module}.{name}")
        return Resolved("missing", module)

    # -- classes ------------------------------------------------------------------------------------------------
    def class_mro(self, class_name: str) -> list[tuple[str, ast.ClassDef]]:
        """``(dotted name, ClassDef)`` of a TRL class and of its ancestors that TRL defines, nearest first
        (depth-first; enough for TRL's single-inheritance trainers). Third-party bases (``transformers.Trainer``) end
        the walk: they are outside this detector."""
        if class_name not in self._mro:
            module = TRL_CLASSES[class_name]
            chain: list[tuple[str, ast.ClassDef]] = []
            self._mro[class_name] = chain
            found = self.resolve(module, class_name)
            self._extend_mro(found, chain)
        return self._mro[class_name]

    def _extend_mro(self, found: Resolved, chain: list[tuple[str, ast.ClassDef]]) -> None:
        if found.kind != "class" or not isinstance(found.node, ast.ClassDef):
            return
        dotted = f"{found.module}.{found.node.name}"
        if any(name == dotted for name, _ in chain):
            return
        chain.append((dotted, found.node))
        for base in found.node.bases:
            if isinstance(base, ast.Name):
                self._extend_mro(self.resolve(found.module, base.id), chain)

    def methods(self, class_name: str) -> dict[str, _Member]:
        """Methods of a TRL class including those it inherits from TRL-defined bases (``_BaseTrainer``)."""
        if class_name not in self._methods:
            members: dict[str, _Member] = {}
            for dotted, node in self.class_mro(class_name):
                for item in _walk_functions(node):
                    members.setdefault(item.name, _Member(dotted, item))
            self._methods[class_name] = members
        return self._methods[class_name]

    def attributes(self, class_name: str) -> dict[str, list[tuple[str, ast.stmt]]]:
        """Attributes a TRL class (or a TRL-defined base) assigns: ``self.a = ...`` anywhere in its methods
        (tuple targets, augmented and annotated assignments included) and class-level names. Maps each name to
        ``(where, statement)`` pairs, ``where`` being ``Class.method`` or ``Class`` for the class body."""
        if class_name not in self._attributes:
            found: dict[str, list[tuple[str, ast.stmt]]] = {}
            for dotted, node in self.class_mro(class_name):
                short = dotted.rsplit(".", 1)[-1]
                for stmt in node.body:
                    for target in _assign_targets(stmt):
                        if isinstance(target, ast.Name):
                            found.setdefault(target.id, []).append((short, stmt))
                for method in _walk_functions(node):
                    for stmt in ast.walk(method):
                        for target in _assign_targets(stmt):
                            if isinstance(target, ast.Attribute) and _is_self(target.value):
                                found.setdefault(target.attr, []).append((f"{short}.{method.name}", stmt))
            self._attributes[class_name] = found
        return self._attributes[class_name]

    def batch_key_values(self) -> dict[str, list[ast.expr]]:
        """Keys of the dict ``GRPOTrainer._generate_and_score_completions`` returns, with the expressions stored
        under each: string keys of a dict literal assigned to ``output`` or returned, and ``output["k"] = ...``."""
        if self._batch_keys is not None:
            return self._batch_keys
        member = self.methods(TRAINER).get(BATCH_METHOD)
        keys: dict[str, list[ast.expr]] = {}
        self._batch_keys = keys
        if member is None:
            return keys
        for node in ast.walk(member.node):
            literal = None
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "output" for t in node.targets
            ):
                literal = node.value
            elif isinstance(node, ast.Return):
                literal = node.value
            if isinstance(literal, ast.Dict):
                for key, value in zip(literal.keys, literal.values):
                    if _string(key) is not None:
                        keys.setdefault(_string(key), []).append(value)  # type: ignore[arg-type]
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if (
                        isinstance(target, ast.Subscript)
                        and isinstance(target.value, ast.Name)
                        and target.value.id == "output"
                        and _string(target.slice) is not None
                    ):
                        keys.setdefault(_string(target.slice), []).append(node.value)  # type: ignore[arg-type]
        return keys

    def _uses(self, class_name: str) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
        """One walk over a TRL class's methods: which methods read ``self.<a>``, and which methods call
        ``<something model>.<m>(...)``."""
        if class_name not in self._use_index:
            reads: dict[str, set[str]] = {}
            model_calls: dict[str, set[str]] = {}
            for name, member in self.methods(class_name).items():
                for node in ast.walk(member.node):
                    if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and _is_self(node.value):
                        reads.setdefault(node.attr, set()).add(name)
                    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                        if "model" in (_last_segment(node.func.value) or ""):
                            model_calls.setdefault(node.func.attr, set()).add(name)
            self._use_index[class_name] = (reads, model_calls)
        return self._use_index[class_name]

    def model_call_attributes(self) -> dict[str, list[str]]:
        """Methods that TRL's trainer calls on a model object (``unwrapped_model.generate(...)``), with the trainer
        methods that call them: what a patch of ``model.<name>`` intercepts."""
        return {attr: sorted(users) for attr, users in self._uses(TRAINER)[1].items()}

    # -- fingerprints -------------------------------------------------------------------------------------------
    def fingerprint(self, symbol: str) -> dict[str, Any]:
        """The fingerprint of one inventory symbol (the symbol forms are listed on :class:`Inventory`); a symbol this
        TRL does not define gets ``{"kind": "missing"}``."""
        if symbol.startswith("write:"):
            return self._fingerprint_write(symbol[len("write:") :])
        if ":" in symbol:
            module, name = symbol.split(":", 1)
            return self._fingerprint_resolved(self.resolve(module, name))
        head, _, member = symbol.partition(".")
        if head in TRL_CLASSES and member:
            found = self.methods(head).get(member)
            if found is None:
                return {"kind": "missing"}
            return {
                "kind": "method",
                "defined_in": found.owner,
                "signature": render_signature(found.node.args),
                "body_hash": body_hash(found.node),
            }
        if self.module_file(symbol):
            return {"kind": "module", "defined_in": symbol}
        return {"kind": "missing"}

    def _class_fingerprint(self, module: str, node: ast.ClassDef) -> dict[str, Any]:
        """A class by its constructor only (keeps the noise low): dataclass field names, else ``__init__``'s
        signature, looked up through TRL-defined bases."""
        chain: list[tuple[str, ast.ClassDef]] = []
        self._extend_mro(Resolved("class", module, node), chain)
        result: dict[str, Any] = {"kind": "class", "defined_in": module}
        if any(_is_dataclass(cls) for _, cls in chain):
            names: set[str] = set()
            for _, cls in chain:
                for stmt in cls.body:
                    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                        if "ClassVar" not in ast.unparse(stmt.annotation):
                            names.add(stmt.target.id)
            result["fields"] = sorted(names)
            return result
        for _, cls in chain:
            init = next((f for f in _walk_functions(cls) if f.name == "__init__"), None)
            if init is not None:
                result["signature"] = render_signature(init.args)
                return result
        result["signature"] = "(inherited from a non-TRL base)"
        return result

    def _fingerprint_resolved(self, found: Resolved) -> dict[str, Any]:
        if found.kind == "function" and isinstance(found.node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return {
                "kind": "function",
                "defined_in": found.module,
                "signature": render_signature(found.node.args),
                "body_hash": body_hash(found.node),
            }
        if found.kind == "class" and isinstance(found.node, ast.ClassDef):
            return self._class_fingerprint(found.module, found.node)
        if found.kind == "module":
            return {"kind": "module", "defined_in": found.module}
        if found.kind == "unresolved":
            return {
                "kind": "unresolved",
                "defined_in": found.module,
                "binding": [ast.unparse(stmt) for stmt in found.bindings],
            }
        return {"kind": "missing"}

    def _fingerprint_write(self, target: str) -> dict[str, Any]:
        if target.startswith("batch[") and target.endswith("]"):
            key = target[len("batch[") : -1]
            values = self.batch_key_values().get(key)
            if values is None:
                return {"kind": "missing"}
            return {
                "kind": "batch_key",
                "defined_in": f"{TRAINER}.{BATCH_METHOD}",
                "body_hash": statements_hash(values),
            }
        if target.startswith("model."):
            users = self.model_call_attributes().get(target[len("model.") :])
            if users is None:
                return {"kind": "missing"}
            methods = self.methods(TRAINER)
            return {
                "kind": "model_patch",
                "used_by": [f"{TRAINER}.{name}" for name in users],
                "body_hash": _sha256(body_hash(methods[name].node) for name in users),
            }
        if ":" in target:
            module, name = target.split(":", 1)
            return self._fingerprint_module_global(module, name)
        head, _, attr = target.partition(".")
        if head not in TRL_CLASSES:
            return {"kind": "missing"}
        statements = self.attributes(head).get(attr)
        if not statements:
            return {"kind": "missing"}
        readers = {f"{head}.{name}" for name in self._uses(head)[0].get(attr, ())}
        return {
            "kind": "attribute",
            "assigned_in": sorted({where for where, _ in statements}),
            "read_in": sorted(readers),
            "body_hash": statements_hash(stmt for _, stmt in statements),
        }

    def _fingerprint_module_global(self, module: str, name: str) -> dict[str, Any]:
        """A patched module global: how TRL binds it and the bodies of the functions there that use it (a patch only
        works while those still look the name up in that module)."""
        tree = self.tree(module)
        if tree is None:
            return {"kind": "missing"}
        binding = [
            stmt
            for stmt in _top_level(tree.body)
            if (isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and stmt.name == name)
            or (
                isinstance(stmt, (ast.Import, ast.ImportFrom))
                and any((a.asname or a.name.split(".")[0]) == name for a in stmt.names)
            )
            or any(isinstance(t, ast.Name) and t.id == name for t in _assign_targets(stmt))
        ]
        if not binding:
            return {"kind": "missing"}
        users: list[tuple[str, ast.AST]] = []

        def visit(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.ClassDef):
                    visit(child, f"{prefix}{child.name}.")
                elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    if any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(child)):
                        users.append((f"{prefix}{child.name}", child))

        visit(tree, "")
        return {
            "kind": "module_global",
            "defined_in": module,
            "binding": [
                ast.unparse(stmt) if not isinstance(stmt, _SCOPES) else f"{ast.unparse(stmt).split()[0]} {name}"
                for stmt in binding
            ],
            "used_by": [where for where, _ in users],
            "body_hash": _sha256([statements_hash(binding)] + [body_hash(node) for _, node in users]),
        }


# ----------------------------------------------------------------------------------------------------------------
# The inventory: what trl-ext touches, generated from its source
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Surface:
    """The TRL names the scanner classifies against: the given TRL's, plus every name a stored fingerprint file
    records, so that a symbol TRL has since removed still appears in the inventory (and is reported as gone)."""

    methods: dict[str, set[str]] = field(default_factory=dict)
    attributes: dict[str, set[str]] = field(default_factory=dict)
    batch_keys: set[str] = field(default_factory=set)
    model_attributes: set[str] = field(default_factory=set)

    @classmethod
    def build(cls, source: TrlSource, stored: Iterable[dict[str, Any]] = ()) -> Surface:
        surface = cls(
            methods={name: set(source.methods(name)) for name in TRL_CLASSES},
            attributes={name: set(source.attributes(name)) for name in TRL_CLASSES},
            batch_keys=set(source.batch_key_values()),
            model_attributes=set(source.model_call_attributes()),
        )
        for data in stored:
            for symbol in data.get("symbols", {}):
                if symbol.startswith("write:batch["):
                    surface.batch_keys.add(symbol[len("write:batch[") : -1])
                elif symbol.startswith("write:model."):
                    surface.model_attributes.add(symbol[len("write:model.") :])
                elif symbol.startswith("write:"):
                    head, _, attr = symbol[len("write:") :].partition(".")
                    if head in TRL_CLASSES and ":" not in attr:
                        surface.attributes.setdefault(head, set()).add(attr)
                elif ":" not in symbol:
                    head, _, name = symbol.partition(".")
                    if head in TRL_CLASSES and name:
                        surface.methods.setdefault(head, set()).add(name)
            for qualified in data.get("attributes", []):
                head, _, attr = qualified.partition(".")
                surface.attributes.setdefault(head, set()).add(attr)
            surface.batch_keys.update(data.get("batch_keys", []))
        return surface


@dataclass
class Inventory:
    """trl-ext's touches of TRL: ``touches[category][symbol]`` lists the ``path:line`` sites.

    Symbols: ``GRPOTrainer.<method>`` (also ``VLLMGeneration.`` / ``VLLMClient.``), ``<module>:<name>`` for
    imports and module attributes (``<module>`` alone for ``import trl.x``), ``GRPOTrainer.<attribute>`` for
    attribute reads, the bare key for batch keys, ``write:<target>`` for writes and patches.
    """

    root: Path
    touches: dict[str, dict[str, list[str]]] = field(default_factory=lambda: {c: {} for c in CATEGORIES})

    def add(self, category: str, symbol: str, site: str) -> None:
        sites = self.touches[category].setdefault(symbol, [])
        if site not in sites:
            sites.append(site)

    def symbols(self) -> set[str]:
        """The symbols that carry a fingerprint (everything but attribute reads and batch-key reads)."""
        return {s for c in ("overrides", "calls", "imports", "writes") for s in self.touches[c]}

    def counts(self) -> dict[str, int]:
        return {category: len(self.touches[category]) for category in CATEGORIES}

    def sorted(self) -> dict[str, dict[str, list[str]]]:
        def site_key(site: str) -> tuple[str, int]:
            path, _, line = site.rpartition(":")
            return path, int(line) if line.isdigit() else 0

        return {
            category: {symbol: sorted(sites, key=site_key) for symbol, sites in sorted(self.touches[category].items())}
            for category in CATEGORIES
        }


@dataclass
class _ClassInfo:
    name: str
    bases: list[str]
    node: ast.ClassDef
    path: Path


def _python_files(root: Path) -> list[Path]:
    own = Path(__file__).resolve()
    return [
        path
        for path in sorted(root.rglob("*.py"))
        if "__pycache__" not in path.parts and path.resolve() != own and path != root / "drift.py"
    ]


class _Scanner(ast.NodeVisitor):
    """One trl-ext file: records touches into the inventory."""

    def __init__(
        self,
        inventory: Inventory,
        surface: Surface,
        source: TrlSource,
        site_prefix: str,
        trainer_classes: set[str],
        own_methods: set[str],
        own_trainer_attributes: set[str],
    ) -> None:
        self.inventory = inventory
        self.surface = surface
        self.source = source
        self.site_prefix = site_prefix
        self.trainer_classes = trainer_classes
        self.own_methods = own_methods
        self.own_trainer_attributes = own_trainer_attributes
        self.class_stack: list[str] = []
        self.module_names: dict[str, str] = {}  # local name -> TRL module it is bound to
        self._call_funcs: set[int] = set()  # ids of Attribute nodes that are the callee of a Call (visited first)

    # -- helpers ------------------------------------------------------------------------------------------------
    def add(self, category: str, symbol: str, node: ast.AST) -> None:
        self.inventory.add(category, symbol, f"{self.site_prefix}:{getattr(node, 'lineno', 0)}")

    @property
    def in_trainer(self) -> bool:
        return bool(self.class_stack) and self.class_stack[-1] in self.trainer_classes

    def is_trainer(self, receiver: ast.expr) -> bool:
        if _is_self(receiver):
            return self.in_trainer
        # `trainer` (a GRPOTrainer handed to a rollout or helper) or the class itself (`GRPOTrainer._method`)
        return _last_segment(receiver) in ("trainer", TRAINER)

    def trl_class_of(self, receiver: ast.expr) -> str | None:
        """Which TRL class an attribute's receiver is taken to be, by its name."""
        if self.is_trainer(receiver):
            return TRAINER
        segment = _last_segment(receiver)
        if segment in GENERATION_RECEIVERS and not (isinstance(receiver, ast.Name) and segment in self.module_names):
            return "VLLMGeneration"
        if segment in CLIENT_RECEIVERS:
            return "VLLMClient"
        return None

    def module_member(self, node: ast.Attribute) -> tuple[str, str] | None:
        """``(module, name)`` for ``<name bound to a TRL module>[.sub...].name``."""
        chain = []
        current: ast.expr = node
        while isinstance(current, ast.Attribute):
            chain.append(current.attr)
            current = current.value
        if not isinstance(current, ast.Name) or current.id not in self.module_names:
            return None
        dotted = [self.module_names[current.id], *reversed(chain)]
        for cut in range(len(dotted) - 1, 0, -1):
            module = ".".join(dotted[:cut])
            if self.source.module_file(module):
                if cut == len(dotted) - 1 and not self.source.module_file(".".join(dotted)):
                    return module, dotted[-1]
                return None
        return None

    def attribute_touch(self, receiver: ast.expr, attr: str, node: ast.AST, store: bool) -> None:
        cls = self.trl_class_of(receiver)
        if cls is None:
            if store and "model" in (_last_segment(receiver) or "") and attr in self.surface.model_attributes:
                self.add("writes", f"write:model.{attr}", node)
            return
        if attr not in self.surface.attributes.get(cls, set()):
            return
        if store:
            self.add("writes", f"write:{cls}.{attr}", node)
        elif not (cls == TRAINER and attr in self.own_trainer_attributes):
            self.add("attributes", f"{cls}.{attr}", node)

    def batch_touch(self, receiver: ast.expr, key: str | None, node: ast.AST, store: bool) -> None:
        if key is None or key not in self.surface.batch_keys:
            return
        if ast.unparse(receiver) not in BATCH_RECEIVERS:
            return
        if store:
            self.add("writes", f"write:batch[{key}]", node)
        else:
            self.add("batch_keys", key, node)

    # -- visitors -----------------------------------------------------------------------------------------------
    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        trainer = node.name in self.trainer_classes
        if trainer:
            for stmt in node.body:
                for target in _assign_targets(stmt):
                    if isinstance(target, ast.Name) and target.id in self.surface.attributes.get(TRAINER, set()):
                        self.add("writes", f"write:{TRAINER}.{target.id}", stmt)
                if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    if stmt.name in self.surface.methods.get(TRAINER, set()):
                        self.add("overrides", f"{TRAINER}.{stmt.name}", stmt)
        self.class_stack.append(node.name)
        self.generic_visit(node)
        self.class_stack.pop()

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == "trl" or alias.name.startswith("trl."):
                self.add("imports", alias.name, node)
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if not node.level and (module == "trl" or module.startswith("trl.")):
            for alias in node.names:
                self.add("imports", f"{module}:{alias.name}", node)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        member = self.module_member(node)
        if member is not None:
            module, name = member
            if isinstance(node.ctx, ast.Load):
                self.add("imports", f"{module}:{name}", node)
            else:
                self.add("writes", f"write:{module}:{name}", node)
        else:
            self.attribute_touch(node.value, node.attr, node, store=not isinstance(node.ctx, ast.Load))
            if isinstance(node.ctx, ast.Load) and id(node) not in self._call_funcs:
                # a TRL method taken as a value (passed to compat.call_accepted, bound for a signature): a call
                self.method_reference(node.value, node.attr, node)
        self.generic_visit(node)

    def method_reference(self, receiver: ast.expr, name: str, node: ast.AST) -> None:
        if name.startswith("__") and name.endswith("__"):
            return
        if name in self.surface.methods.get(TRAINER, set()) and self.is_trainer(receiver):
            if name not in self.own_methods or _last_segment(receiver) == TRAINER:
                self.add("calls", f"{TRAINER}.{name}", node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        self.batch_touch(node.value, _string(node.slice), node, store=not isinstance(node.ctx, ast.Load))
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        key = _string(node.left)
        for op, right in zip(node.ops, node.comparators):
            if isinstance(op, (ast.In, ast.NotIn)):
                self.batch_touch(right, key, node, store=False)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        self._call_funcs.add(id(func))
        getter = _last_segment(func) if isinstance(func, (ast.Name, ast.Attribute)) else None
        if getter in ("getattr", "hasattr", "setattr", "trainer_attr") and len(node.args) >= 2:
            # compat.trainer_attr(obj, "name", default) reads like getattr
            attr = _string(node.args[1])
            if attr is not None:
                self.attribute_touch(node.args[0], attr, node, store=getter == "setattr")
                if getter != "setattr":  # getattr(trainer, "_log_completion_extra", None): a method taken by name
                    self.method_reference(node.args[0], attr, node)
        if isinstance(func, ast.Attribute):
            receiver, name = func.value, func.attr
            if name in ("get", "pop") and node.args:
                self.batch_touch(receiver, _string(node.args[0]), node, store=False)
            self.method_call(receiver, name, node)
        self.generic_visit(node)

    def method_call(self, receiver: ast.expr, name: str, node: ast.Call) -> None:
        if name.startswith("__") and name.endswith("__"):
            return
        via_super = isinstance(receiver, ast.Call) and _last_segment(receiver.func) == "super"
        if name in self.surface.methods.get(TRAINER, set()):
            if via_super and self.in_trainer:
                self.add("calls", f"{TRAINER}.{name}", node)
            elif not via_super and name not in self.own_methods:
                # Public names (log, compute_loss, ...) are common words: only on a trainer. A private name on any
                # object is almost surely a reach into TRL.
                if self.is_trainer(receiver) or name.startswith("_"):
                    self.add("calls", f"{TRAINER}.{name}", node)
            return
        cls = self.trl_class_of(receiver)
        if cls in ("VLLMGeneration", "VLLMClient") and name in self.surface.methods.get(cls, set()):
            self.add("calls", f"{cls}.{name}", node)


def _module_bindings(imports: list[ast.Import | ast.ImportFrom], source: TrlSource) -> dict[str, str]:
    """Local names bound to TRL modules by a file's imports (``import trl.x``, ``from trl.generation import
    vllm_generation``); function-level imports included, shadowing ignored."""
    names: dict[str, str] = {}
    for node in imports:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "trl" or alias.name.startswith("trl."):
                    if alias.asname:
                        names[alias.asname] = alias.name
                    else:
                        names[alias.name.split(".")[0]] = "trl"
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module == "trl" or node.module.startswith("trl."):
                for alias in node.names:
                    dotted = f"{node.module}.{alias.name}"
                    if source.module_file(dotted) and source.resolve(node.module, alias.name).kind == "module":
                        names[alias.asname or alias.name] = dotted
    return names


def load_fingerprint_files(directory: Path | str | None = None) -> dict[str, dict[str, Any]]:
    """Stored fingerprint files by TRL version."""
    directory = Path(directory) if directory is not None else FINGERPRINTS_DIR
    return {
        path.stem: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(directory.glob("*.json"))
        if path.is_file()
    }


def scan_inventory(
    package_root: Path | str | None = None,
    source: TrlSource | None = None,
    fingerprints_dir: Path | str | None = None,
) -> Inventory:
    """Generate the inventory of TRL touches from every ``.py`` file under ``package_root`` (default: this package,
    without this module).

    A name counts as TRL's when the given TRL defines it or a stored fingerprint file records it. Trainer classes
    are those inheriting (transitively, by class name across the package) from ``GRPOTrainer``; ``self`` means the
    trainer only inside them, ``trainer`` means it everywhere.
    """
    root = Path(package_root).resolve() if package_root is not None else PACKAGE_ROOT
    source = source if source is not None else TrlSource()
    surface = Surface.build(source, load_fingerprint_files(fingerprints_dir).values())
    files = [(path, _parse(path)) for path in _python_files(root)]

    classes: dict[str, list[_ClassInfo]] = {}
    imports: dict[Path, list[ast.Import | ast.ImportFrom]] = {}
    own_trainer_attributes: set[str] = set()  # assigned on `trainer` anywhere, or on `self` in a trainer class
    for path, tree in files:
        imports[path] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = [b for b in (_last_segment(base) for base in node.bases) if b]
                classes.setdefault(node.name, []).append(_ClassInfo(node.name, bases, node, path))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                imports[path].append(node)
            else:
                for target in _assign_targets(node):
                    if isinstance(target, ast.Attribute) and _last_segment(target.value) == "trainer":
                        own_trainer_attributes.add(target.attr)
    trainer_classes: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, infos in classes.items():
            if name not in trainer_classes and any(
                base == TRAINER or base in trainer_classes for info in infos for base in info.bases
            ):
                trainer_classes.add(name)
                changed = True
    # Mixins written for trainers (`class T(HAPOTemperatureMixin, CalibAdvTrainer)`): a package class that is a base
    # of a trainer class runs as the trainer too, so its `self` is the trainer and its methods override TRL's.
    changed = True
    while changed:
        changed = False
        for name in list(trainer_classes):
            for info in classes.get(name, []):
                for base in info.bases:
                    if base in classes and base not in trainer_classes:
                        trainer_classes.add(base)
                        changed = True
    own_methods = {item.name for infos in classes.values() for info in infos for item in _walk_functions(info.node)}
    for name in trainer_classes:
        for info in classes[name]:
            for node in ast.walk(info.node):
                for target in _assign_targets(node):
                    if isinstance(target, ast.Attribute) and _is_self(target.value):
                        own_trainer_attributes.add(target.attr)

    inventory = Inventory(root)
    for path, tree in files:
        scanner = _Scanner(
            inventory,
            surface,
            source,
            path.relative_to(root.parent).as_posix(),
            trainer_classes,
            own_methods,
            own_trainer_attributes,
        )
        scanner.module_names = _module_bindings(imports[path], source)
        scanner.visit(tree)
    return inventory


# ----------------------------------------------------------------------------------------------------------------
# Recording and checking
# ----------------------------------------------------------------------------------------------------------------
def build_record(inventory: Inventory, source: TrlSource, version: str) -> dict[str, Any]:
    """The fingerprint file content for ``inventory`` against ``source`` (see :func:`record`): ``symbols`` (the
    fingerprint of each override, call, import and write), ``attributes`` (the attribute reads reviewed), ``batch_keys``
    (every key TRL's batch dict has) and ``attribute_sets`` (every attribute each TRL class assigns; informational)."""
    current_attributes = {f"{cls}.{a}" for cls in TRL_CLASSES for a in source.attributes(cls)}
    symbols = {}
    for symbol in sorted(inventory.symbols()):
        symbols[symbol] = dict(sorted(source.fingerprint(symbol).items()))
    attribute_sets = {}
    for cls in sorted(TRL_CLASSES):
        names = sorted(source.attributes(cls))
        attribute_sets[cls] = {"names": names, "sha256": _sha256(names)}
    return {
        "trl_version": version,
        "generated_by": RECORD_COMMAND,
        "symbols": symbols,
        "attributes": sorted(a for a in inventory.touches["attributes"] if a in current_attributes),
        "batch_keys": sorted(source.batch_key_values()),
        "attribute_sets": attribute_sets,
    }


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2) + "\n"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def nearest_version(version: str, available: Iterable[str]) -> str | None:
    """The stored version to compare an unrecorded one against: the newest at or below it, else the oldest."""
    ordered = sorted(available, key=_version_key)
    below = [v for v in ordered if _version_key(v) <= _version_key(version)]
    return below[-1] if below else (ordered[0] if ordered else None)


@dataclass
class Finding:
    """One difference between the stored fingerprints and the TRL being checked."""

    kind: str  # changed | not reviewed | gone | attribute | batch keys | version
    symbol: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind.upper()}: {self.symbol}: {self.detail}"


@dataclass
class CheckResult:
    """What :func:`check` found; ``ok`` when nothing differs."""

    trl_version: str
    trl_root: Path
    stored_version: str | None
    stored_path: Path | None
    inventory: Inventory
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def format(self) -> str:
        counts = self.inventory.counts()
        if self.ok:
            return (
                f"trl-ext drift: OK: TRL {self.trl_version} matches the fingerprints recorded in "
                f"{self.stored_path.name if self.stored_path else '?'} ({sum(counts.values())} touches: "
                + ", ".join(f"{counts[c]} {c}" for c in CATEGORIES)
                + ")"
                + "".join(f"\nnote: {note}" for note in self.notes)
            )
        lines = [f"trl-ext drift: TRL {self.trl_version} at {self.trl_root}"]
        lines.append(f"compared against: {self.stored_path if self.stored_path else 'no stored fingerprints'}")
        sites = self.inventory.sorted()
        for finding in self.findings:
            lines.append(str(finding))
            for category in CATEGORIES:
                if finding.symbol in sites[category]:
                    where = sites[category][finding.symbol]
                    more = f" (+{len(where) - 3} more)" if len(where) > 3 else ""
                    lines.append(f"    {category} at {', '.join(where[:3])}{more}")
        lines.extend(f"note: {note}" for note in self.notes)
        lines.append(
            f"{len(self.findings)} difference(s). Review each in TRL's source (docs/maintaining.md), adapt trl-ext, "
            f"then record the reviewed fingerprints: {RECORD_COMMAND}"
        )
        return "\n".join(lines)


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """A one-line account of how a fingerprint changed: signature old -> new, body changed yes/no, and so on."""
    if old.get("kind") != new.get("kind"):
        if new.get("kind") == "missing":
            return f"gone from TRL (was {old.get('kind')} in {old.get('defined_in', '?')})"
        return f"kind {old.get('kind')} -> {new.get('kind')}"
    parts = []
    if "signature" in old or "signature" in new:
        if old.get("signature") != new.get("signature"):
            parts.append(f"signature {old.get('signature')} -> {new.get('signature')}")
        else:
            parts.append(f"signature unchanged {new.get('signature')}")
    if "body_hash" in old or "body_hash" in new:
        parts.append(f"body changed: {'yes' if old.get('body_hash') != new.get('body_hash') else 'no'}")
    for key in sorted(set(old) | set(new)):
        if key in ("kind", "signature", "body_hash") or old.get(key) == new.get(key):
            continue
        before, after = old.get(key), new.get(key)
        if isinstance(before, list) and isinstance(after, list):
            added = sorted(set(after) - set(before))
            removed = sorted(set(before) - set(after))
            parts.append(f"{key}: " + " ".join([*(f"+{a}" for a in added), *(f"-{r}" for r in removed)]))
        else:
            parts.append(f"{key} {before!r} -> {after!r}")
    return "; ".join(parts)


def compare(inventory: Inventory, stored: dict[str, Any], source: TrlSource) -> tuple[list[Finding], list[str]]:
    """Findings (each fails the check) and notes (informational) for ``inventory`` against ``stored`` fingerprints
    and the TRL in ``source``."""
    findings: list[Finding] = []
    notes: list[str] = []
    symbols = stored.get("symbols", {})
    wanted = inventory.symbols()
    for symbol in sorted(wanted | set(symbols)):
        current = source.fingerprint(symbol)
        if symbol in wanted:
            if symbol not in symbols:
                findings.append(Finding("not reviewed", symbol, f"not in the stored fingerprints (now: {current})"))
            elif current != symbols[symbol]:
                findings.append(Finding("changed", symbol, describe_change(symbols[symbol], current)))
        elif current.get("kind") == "missing" and symbols[symbol].get("kind") != "missing":
            findings.append(Finding("gone", symbol, "a stored symbol that TRL no longer defines"))
        else:
            notes.append(f"{symbol} is stored but trl-ext no longer touches it ({RECORD_COMMAND} drops it)")
    current_attributes = {f"{cls}.{a}" for cls in TRL_CLASSES for a in source.attributes(cls)}
    reviewed_attributes = set(stored.get("attributes", []))
    for attribute in sorted(inventory.touches["attributes"]):
        if attribute not in current_attributes:
            findings.append(Finding("attribute", attribute, "read by trl-ext, no longer set by TRL"))
        elif attribute not in reviewed_attributes:
            findings.append(Finding("not reviewed", attribute, "attribute read not in the stored fingerprints"))
    current_keys = set(source.batch_key_values())
    stored_keys = set(stored.get("batch_keys", []))
    for key in sorted(inventory.touches["batch_keys"]):
        if key not in current_keys:
            findings.append(Finding("batch keys", key, "read by trl-ext, no longer in TRL's batch dict"))
    if current_keys != stored_keys:
        added, removed = sorted(current_keys - stored_keys), sorted(stored_keys - current_keys)
        change = " ".join([*(f"+{k}" for k in added), *(f"-{k}" for k in removed)])
        findings.append(Finding("batch keys", f"{TRAINER}.{BATCH_METHOD}", f"returned keys changed: {change}"))
    for cls, recorded in stored.get("attribute_sets", {}).items():
        now = set(source.attributes(cls)) if cls in TRL_CLASSES else set()
        before = set(recorded.get("names", []))
        if now != before:
            change = " ".join([*(f"+{a}" for a in sorted(now - before)), *(f"-{a}" for a in sorted(before - now))])
            notes.append(f"{cls} now assigns a different attribute set: {change}")
    return findings, notes


def _resolve_version(source: TrlSource, version: str | None) -> str:
    found = version or source.version()
    if not found:
        raise ValueError(f"cannot tell the TRL version of {source.root}; pass --version")
    return found


def check(
    trl_root: Path | str | None = None,
    version: str | None = None,
    package_root: Path | str | None = None,
    fingerprints_dir: Path | str | None = None,
    inventory: Inventory | None = None,
) -> CheckResult:
    """Compare the TRL under ``trl_root`` (default: the installed one) with the fingerprints stored for its version
    (or, when none are stored, for the nearest stored version, which is itself a finding).

    ``inventory``: one already scanned (:func:`scan_inventory`) to reuse; by default ``package_root`` is scanned.
    """
    source = TrlSource(trl_root)
    trl_version = _resolve_version(source, version)
    directory = Path(fingerprints_dir) if fingerprints_dir is not None else FINGERPRINTS_DIR
    if inventory is None:
        inventory = scan_inventory(package_root, source, directory)
    stored_files = load_fingerprint_files(directory)
    stored_version = trl_version if trl_version in stored_files else nearest_version(trl_version, stored_files)
    result = CheckResult(
        trl_version,
        source.root,
        stored_version,
        directory / f"{stored_version}.json" if stored_version else None,
        inventory,
    )
    if stored_version != trl_version:
        result.findings.append(
            Finding(
                "version",
                f"TRL {trl_version}",
                f"fingerprints for TRL {trl_version} are not recorded"
                + (f"; compared against the nearest recorded version {stored_version}" if stored_version else "")
                + f". Review the differences, then `{RECORD_COMMAND}`",
            )
        )
    stored = stored_files.get(stored_version, {}) if stored_version else {}
    findings, notes = compare(inventory, stored, source)
    result.findings.extend(findings)
    result.notes.extend(notes)
    return result


def record(
    trl_root: Path | str | None = None,
    version: str | None = None,
    out: Path | str | None = None,
    package_root: Path | str | None = None,
    fingerprints_dir: Path | str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Write the fingerprints of the current inventory for the TRL under ``trl_root``: the reviewed state that
    :func:`check` compares against. Returns the path and the content."""
    source = TrlSource(trl_root)
    trl_version = _resolve_version(source, version)
    directory = Path(fingerprints_dir) if fingerprints_dir is not None else FINGERPRINTS_DIR
    inventory = scan_inventory(package_root, source, directory)
    data = build_record(inventory, source, trl_version)
    path = Path(out) if out is not None else directory / f"{trl_version}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_dump(data), encoding="utf-8")
    return path, data


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------
def format_inventory(inventory: Inventory, max_sites: int = 3) -> str:
    """The inventory grouped by category with counts (what the docs quote as the size of the contact surface)."""
    counts = inventory.counts()
    lines = [
        f"trl-ext contact surface with TRL, generated from {inventory.root}: {sum(counts.values())} touches",
    ]
    for category, symbols in inventory.sorted().items():
        lines.append(f"\n{category} ({counts[category]})")
        width = max((len(s) for s in symbols), default=0)
        for symbol, sites in symbols.items():
            more = f" (+{len(sites) - max_sites} more)" if len(sites) > max_sites else ""
            lines.append(f"  {symbol:<{width}}  {', '.join(sites[:max_sites])}{more}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trl_ext.drift",
        description="Inventory of the TRL internals trl-ext touches, and a check of their fingerprints.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--trl-root", help="TRL's package directory (default: the installed trl, not imported)")
        sub.add_argument("--package-root", help=argparse.SUPPRESS)
        sub.add_argument("--fingerprints-dir", help=argparse.SUPPRESS)

    sub = commands.add_parser("inventory", help="list what trl-ext touches in TRL, by category, with counts")
    common(sub)
    sub.add_argument("--json", action="store_true", help="machine-readable output")
    for name, text in (
        ("check", "compare TRL with the stored fingerprints; exit 1 on any difference"),
        ("report", "as check, but always exit 0 (informational probe of a newer TRL)"),
    ):
        sub = commands.add_parser(name, help=text)
        common(sub)
        sub.add_argument("--version", help="TRL version to compare as (default: read from TRL's files)")
    sub = commands.add_parser("record", help="write the fingerprints of the current inventory for this TRL version")
    common(sub)
    sub.add_argument("--version", help="TRL version to record as (default: read from TRL's files)")
    sub.add_argument("--out", help="output file (default: trl_ext/trl_fingerprints/<version>.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m trl_ext.drift``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "inventory":
            inventory = scan_inventory(args.package_root, TrlSource(args.trl_root), args.fingerprints_dir)
            if args.json:
                payload = {"counts": inventory.counts(), "touches": inventory.sorted()}
                print(json.dumps(payload, indent=2))
            else:
                print(format_inventory(inventory))
            return 0
        if args.command in ("check", "report"):
            result = check(args.trl_root, args.version, args.package_root, args.fingerprints_dir)
            print(result.format())
            return 0 if result.ok or args.command == "report" else 1
        path, data = record(args.trl_root, args.version, args.out, args.package_root, args.fingerprints_dir)
        missing = sorted(s for s, fp in data["symbols"].items() if fp.get("kind") == "missing")
        print(f"wrote {path}: {len(data['symbols'])} symbols, TRL {data['trl_version']}")
        for symbol in missing:
            print(f"warning: {symbol} does not exist in this TRL (recorded as missing)")
        return 0
    except (FileNotFoundError, ValueError, SyntaxError) as exc:
        print(f"trl-ext drift: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
