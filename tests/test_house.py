"""The shape of the package: no import circles, one declaration per trainer, files of one concern.

The import graph is built from the source (module-level and function-level ``import`` / ``from ... import``
statements, relative imports resolved; ``from package import name`` points at ``package.name`` when that is a module,
else at the package's ``__init__``), so a circle hidden in a function body counts as much as one at the top.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "trl_ext"

#: The largest module allowed; a file over it must be split by concern (the closing note lists the biggest).
MAX_MODULE_LINES = 800


def _module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in its body)."""
    files = {_module_name(path, root): path for path in root.rglob("*.py") if "__pycache__" not in path.parts}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in files else module for a in node.names]
            for target in targets:
                while target and target not in files and "." in target:
                    target = target.rsplit(".", 1)[0]  # `import a.b.c` of a module a.b.c, or a name in a.b
                if target in files and target != name:
                    graph[name].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), as sorted lists."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_package_has_no_import_circle():
    cycles = find_cycles(import_graph())
    assert cycles == [], cycles


def test_the_cycle_finder_sees_a_function_level_circle(tmp_path):
    # The control: a circle through a function-level import is found.
    package = tmp_path / "trl_ext"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "a.py").write_text("from trl_ext.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from . import a\n    return a\n")
    (package / "c.py").write_text("import trl_ext.sub.a\n")
    assert find_cycles(import_graph(package)) == [["trl_ext.sub.a", "trl_ext.sub.b"]]


def test_no_module_is_oversized():
    sizes = {
        _module_name(path): len(path.read_text().splitlines())
        for path in PACKAGE.rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}


@pytest.mark.parametrize("name", ["trl_ext.registry", "trl_ext.catalogue"])
def test_registry_and_catalogue_import_no_component(name):
    """The registry finds built-ins from the catalogue's declarations (``module:attr``), importing them on first use."""
    assert not {m for m in import_graph()[name] if m.startswith(("trl_ext.trainers", "trl_ext.advantages"))}


# ---------------------------------------------------------------------------------------------------------------------
# One declaration per trainer: its module plus one catalogue entry, nothing else
# ---------------------------------------------------------------------------------------------------------------------
TOY_MODULE = '''
from dataclasses import dataclass, field

from trl_ext.trainers.base import BaseGRPOConfig, BaseGRPOTrainer


@dataclass
class ToyConfig(BaseGRPOConfig):
    """GRPO with a logged constant (the smallest trainer there is)."""

    toy_value: float = field(default=0.5, metadata={"help": "Logged as toy/value."})


class ToyTrainer(BaseGRPOTrainer):
    _tag_names = ["trl", "grpo", "trl-ext", "toy"]
    _name = "Toy"

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        self._metrics["train" if self.model.training else "eval"]["toy/value"].append(self.args.toy_value)
        return output
'''


def test_a_trainer_declared_by_its_module_and_one_catalogue_entry(tmp_path, monkeypatch, capsys, tiny_checkpoint):
    from datasets import Dataset

    import trl_ext
    from trl_ext.catalogue import BUILTIN_TRAINERS, KEY_METRICS, BuiltinTrainer
    from trl_ext.cli import list_main
    from trl_ext.training import make_train_parser

    (tmp_path / "toy_method.py").write_text(TOY_MODULE)  # file 1: the module (config + trainer)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(  # file 2: the catalogue entry
        BUILTIN_TRAINERS,
        "toy",
        BuiltinTrainer("toy_method:ToyTrainer", "toy_method:ToyConfig", "a logged constant", "", ("toy/value",)),
    )
    # Everything else derives from the declaration: the registry, the public names, the key metrics, `trl-ext list`
    # and the `trl-ext train` parser.
    assert "toy" in trl_ext.list_trainers()
    trainer_cls, config_cls = trl_ext.get_trainer("toy")
    assert (trainer_cls.__name__, config_cls.__name__) == ("ToyTrainer", "ToyConfig")
    assert trl_ext.ToyTrainer is trainer_cls and trl_ext.ToyConfig is config_cls
    assert KEY_METRICS["toy"] == ("toy/value",)
    list_main([])
    assert "toy" in capsys.readouterr().out
    assert make_train_parser("toy").parse_args_and_config(["--toy_value", "0.25", "--output_dir", str(tmp_path)])[
        1
    ].toy_value == pytest.approx(0.25)

    args = config_cls(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=4, max_completion_length=4,
        max_steps=1, report_to="none", use_cpu=True, logging_steps=1, save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    trainer = trainer_cls(
        model=tiny_checkpoint,
        reward_funcs=[lambda completions, **kw: [float(len(c)) for c in completions]],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["ab", "cd", "ef", "gh"]}),
    )
    trainer.train()
    assert [e["toy/value"] for e in trainer.state.log_history if "toy/value" in e] == [0.5]
