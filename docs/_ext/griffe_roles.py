"""Griffe extension for the API reference: docstring cross-references become links, or fail the strict build.

The docstrings of ``trl_ext`` cross-reference in two notations that Markdown does not know: Sphinx roles
(``:class:`~trl_ext.generation.base.SamplingChange```, ``:func:`method_metrics```) and Hugging Face's
```[`BNPOTrainer`]```. Rendered as they are, both show their punctuation and link nowhere. Before mkdocstrings
renders, this extension rewrites each one:

* a target inside ``trl_ext`` that the API pages render becomes a mkdocs-autorefs link (``[`X`][full.path]``), which
  the strict build checks;
* a target inside ``trl_ext`` that exists but is not rendered (a private helper, a module without an API page)
  becomes inline code;
* a target outside ``trl_ext`` (``trl.GRPOTrainer``, ``torch.cummin``) becomes inline code: no inventory of those
  projects is fetched (the build is offline);
* a target that cannot be found at all becomes a link anyway, so that ``mkdocs build --strict`` fails on it, naming
  the target: a broken cross-reference is fixed in the docstring, not hidden.

Which modules are rendered is read from the ``::: module`` lines of the API pages (``docs/api/``), so the pages are the
one list.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

#: ``:role:`target``` or ``:role:`~target``` (``~``: show the last component only); a docstring may wrap the target
#: after a dot.
SPHINX_ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|mod|attr|data|obj|exc|const):`(~?)([\w.]+(?:\n\s*[\w.]+)*)(?:\(\))?`"
)
#: Hugging Face's doc-builder link ``[`target`]``, not followed by a Markdown link target.
HF_LINK = re.compile(r"\[`([\w.]+)`\](?![\[(])")
#: The ``::: dotted.path`` lines of a mkdocstrings page.
DIRECTIVE = re.compile(r"^:::\s+([\w.]+)\s*$", re.MULTILINE)

PACKAGE = "trl_ext"

Resolver = Callable[[str], "tuple[str, str]"]
"""``name -> (kind, path)``; kind ``"link"``, ``"code"`` or ``"broken"`` (path: what to link to, or the name)."""


def rewrite_references(text: str, resolve: Resolver) -> str:
    """The docstring ``text`` with every Sphinx role and Hugging Face link replaced (see the module docstring)."""

    def replace(name: str, short: bool) -> str:
        kind, path = resolve(name)
        shown = f"`{name.rsplit('.', 1)[-1] if short else name}`"
        if kind == "code":
            return shown
        return f"[{shown}][{path}]"

    text = SPHINX_ROLE.sub(lambda m: replace(re.sub(r"\s+", "", m.group(2)), m.group(1) == "~"), text)
    return HF_LINK.sub(lambda m: replace(m.group(1), False), text)


def rendered_modules(api_dir: Path) -> set[str]:
    """The modules the API pages under ``api_dir`` render (``::: trl_ext.x`` lines)."""
    modules: set[str] = set()
    for page in sorted(api_dir.rglob("*.md")):
        modules.update(DIRECTIVE.findall(page.read_text(encoding="utf-8")))
    return modules


def classify(path: str, exists: bool, public: bool, documented: bool, modules: Iterable[str]) -> tuple[str, str]:
    """Link, code or broken, for a target resolved to ``path`` (see the module docstring)."""
    if not (path == PACKAGE or path.startswith(PACKAGE + ".")):
        return ("code", path)
    if not exists:
        return ("broken", path)
    rendered = any(path == module or path.startswith(module + ".") for module in modules)
    if rendered and public and documented:
        return ("link", path)
    return ("code", path)


try:
    import griffe
except ImportError:  # the pure functions above are tested without the docs tools installed
    griffe = None

if griffe is not None:

    class CrossReferences(griffe.Extension):
        """Rewrite the cross-references of every docstring of the package once it is loaded."""

        def __init__(self) -> None:
            super().__init__()
            api_dir = Path(__file__).resolve().parents[1] / "api"
            self.modules = rendered_modules(api_dir)
            if not self.modules:  # every reference would silently become code
                raise ValueError(f"no `::: module` line in the API pages under {api_dir}")

        def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
            if pkg.name != PACKAGE:
                return
            for obj in _walk(pkg):
                if obj.docstring is not None:
                    obj.docstring.value = rewrite_references(obj.docstring.value, self._resolver(obj, loader))

        def _resolver(self, scope: griffe.Object, loader: griffe.GriffeLoader) -> Resolver:
            def resolve(name: str) -> tuple[str, str]:
                head, _, rest = name.partition(".")
                if head == PACKAGE:
                    path = name
                else:
                    try:
                        path = scope.resolve(head) + ("." + rest if rest else "")
                    except griffe.NameResolutionError:
                        # Not in scope: a dotted name outside the package (trl.GRPOConfig), else a broken reference.
                        return ("code", name) if rest else ("broken", name)
                target = _lookup(loader, path)
                if target is None:
                    return classify(path, False, False, False, self.modules)
                public = not any(part.startswith("_") for part in target.path.split(".")[1:])
                return classify(target.path, True, public, target.has_docstrings, self.modules)

            return resolve


def _walk(obj):
    """The object and everything defined in it (aliases, i.e. imported names, are skipped)."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


def _lookup(loader, path: str):
    """The object at ``path`` (through aliases), or None."""
    try:
        target = loader.modules_collection[path]
    except (KeyError, ValueError):
        return None
    while target.is_alias:
        try:
            target = target.final_target
        except Exception:  # an alias into a package that is not loaded (trl, torch)
            return None
    return target
