"""The inventory: what trl-ext touches inside TRL, generated from trl-ext's own source."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl_ext.drift.ast_tools import (
    _assign_targets,
    _is_self,
    _last_segment,
    _parse,
    _string,
    _walk_functions,
)
from trl_ext.drift.constants import (
    BATCH_RECEIVERS,
    CATEGORIES,
    CLIENT_RECEIVERS,
    FINGERPRINTS_DIR,
    GENERATION_RECEIVERS,
    PACKAGE_ROOT,
    TRAINER,
    TRL_CLASSES,
)
from trl_ext.drift.trl_source import (
    TrlSource,
)


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
    """The package's source files, without the drift detector itself (its names of TRL symbols are data)."""
    own = Path(__file__).resolve().parent
    return [
        path
        for path in sorted(root.rglob("*.py"))
        if "__pycache__" not in path.parts and own not in path.resolve().parents and path.parent != root / "drift"
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
