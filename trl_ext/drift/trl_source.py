"""TRL's source, read without importing TRL: resolve a name to its definition and fingerprint it."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl_ext.drift.ast_tools import (
    _SCOPES,
    _assign_targets,
    _is_dataclass,
    _is_self,
    _last_segment,
    _parse,
    _sha256,
    _string,
    _top_level,
    _walk_functions,
    body_hash,
    render_signature,
    statements_hash,
)
from trl_ext.drift.constants import (
    BATCH_METHOD,
    TRAINER,
    TRL_CLASSES,
)


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
