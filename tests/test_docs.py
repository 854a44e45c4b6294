"""Docs that run: every fenced code block of the Markdown a user reads is checked by the label written next to it.

The pages are ``README.md``, ``docs/**/*.md`` and ``recipes/**/*.md``. The line just above each fence (blank lines
between are allowed) is an HTML comment, invisible on a code host and in the site, that says what the block is:

    <!-- snippet: KIND[; OPTION; ...][ -- why] -->

* ``run`` (Python): executed, offline, each block in a fresh module (``tests/snippet_worker.py``; one process for all
  of them, so that torch and TRL load once). ``trainer.train()`` runs one optimizer step. Options, each a stand-in
  for what the page leaves to the reader or to the network:
  ``tiny-model`` (a hub model id passed as ``model="Org/Name"`` becomes a tiny random checkpoint built offline),
  ``tiny-dataset`` (``datasets.load_dataset`` returns 16 arithmetic prompts), ``given=NAME,...`` (names the page
  assumes defined: ``dataset``, ``my_reward``, ``paraphrase``), ``no-train`` (``train()`` is not run: the reward
  needs an optional extra the tests do not install; everything up to it is), ``file=PATH`` (the block is the module
  ``PATH`` the page tells the reader to create; later blocks import it).
* ``parse`` (Python with a reason: placeholders such as ``model=...`` or a fragment; YAML, TOML, JSON): Python must
  parse and every name it imports from ``trl`` or ``trl_ext`` must exist; data must load.
* ``check`` (shell): every command is checked without running it: a ``trl-ext`` subcommand exists, a named trainer is
  registered, every repository path exists (``recipes/<trainer>/<task>.yaml`` needs one match), a ``python`` script
  or ``-m`` module exists, ``pip install`` installs trl-ext from the checkout with extras that exist, and a
  ``trl-ext train`` / ``recipes/train.py`` command line parses into its trainer's config. Cheap commands run for real:
  ``trl-ext list``, ``trl-ext --version`` and ``--help`` of every subcommand but ``vllm-serve`` (it needs vLLM).
* ``text`` (anything that is not meant to run: formulas, console output; with a reason when the fence names a
  programming language).

A block without a valid label fails. ``test_the_checks_catch_what_a_reader_would_hit`` feeds a hand-made page with
the errors readers reported through the same pipeline, so the checks are seen to fail.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from snippet_worker import STAND_INS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli before Python 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "snippet_worker.py"

PYTHON = {"python", "py"}
SHELL = {"bash", "sh", "shell", "console"}
DATA = {"yaml", "yml", "toml", "json"}
CODE = PYTHON | SHELL | DATA
#: The kinds a label may give a block, by the fence's language.
ALLOWED = {"run": PYTHON, "parse": PYTHON | DATA, "check": SHELL, "text": None}
RUN_FLAGS = {"tiny-model", "tiny-dataset", "no-train"}

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
LABEL = re.compile(r"^\s*<!--\s*snippet:(?P<body>.*?)-->\s*$")


def doc_pages(root: Path = ROOT) -> list[Path]:
    """The Markdown a user reads: the README, the documentation, the recipes' notes."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md")), *sorted((root / "recipes").rglob("*.md"))]


@dataclass(frozen=True)
class Label:
    kind: str
    flags: frozenset[str] = frozenset()
    given: tuple[str, ...] = ()
    file: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    lang: str
    source: str
    label_text: str | None  # the comment's body, None without a comment

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def extract_blocks(text: str, page: str) -> list[Block]:
    """Every fenced block of a Markdown text, with the label comment above it (indented fences, in list items, too)."""
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        closing = re.compile(rf"^ *{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = next((j for j in range(i + 1, len(lines)) if closing.match(lines[j])), None)
        if end is None:
            raise ValueError(f"{page}:{i + 1}: a fence that is never closed")
        body = [line[indent:] if not line[:indent].strip() else line for line in lines[i + 1 : end]]
        above = i - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        label = LABEL.match(lines[above]) if above >= 0 else None
        info = opening["info"].strip()
        lang = info.split()[0].lower() if info else ""
        blocks.append(Block(page, i + 1, lang, "\n".join(body) + "\n", label["body"].strip() if label else None))
        i = end + 1
    return blocks


def parse_label(block: Block) -> Label:
    """The block's label, or ValueError saying what is wrong with it."""
    if block.label_text is None:
        raise ValueError(f"{block.where}: no `<!-- snippet: KIND -->` line above the {block.lang or 'plain'} block")
    head, _, reason = block.label_text.partition(" -- ")
    kind, *options = [part.strip() for part in head.split(";")]
    reason = reason.strip()
    if kind not in ALLOWED:
        raise ValueError(f"{block.where}: unknown kind {kind!r}; one of {', '.join(ALLOWED)}")
    languages = ALLOWED[kind]
    if languages is not None and block.lang not in languages:
        raise ValueError(f"{block.where}: `{kind}` does not apply to a {block.lang or 'plain'} block")
    if kind == "text" and block.lang in PYTHON:
        raise ValueError(f"{block.where}: a python block runs or parses; a block that is not Python is not `python`")
    needs_reason = (kind == "parse" and block.lang in PYTHON) or (kind == "text" and block.lang in CODE)
    if needs_reason and not reason:
        raise ValueError(f"{block.where}: `{kind}` on a {block.lang} block needs a reason (`-- why`)")
    flags, given, file = set(), (), None
    for option in filter(None, options):
        if kind != "run":
            raise ValueError(f"{block.where}: options are for `run` blocks, got {option!r}")
        if option in RUN_FLAGS:
            flags.add(option)
        elif option.startswith("given="):
            given = tuple(name.strip() for name in option.removeprefix("given=").split(","))
            unknown = [name for name in given if name not in STAND_INS]
            if unknown:
                raise ValueError(f"{block.where}: no stand-in for {unknown}; known: {sorted(STAND_INS)}")
        elif option.startswith("file="):
            file = option.removeprefix("file=")
            if not re.fullmatch(r"\w+(/\w+)*\.py", file):
                raise ValueError(f"{block.where}: file= wants a relative module path, got {file!r}")
        else:
            raise ValueError(f"{block.where}: unknown option {option!r}")
    return Label(kind, frozenset(flags), given, file, reason)


def python_imports(source: str) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every ``from trl... import`` / ``from trl_ext... import`` of a Python block."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("trl", "trl_ext"):
            found.append((node.module, [alias.name for alias in node.names if alias.name != "*"]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.split(".")[0] in ("trl", "trl_ext")]
    return found


# --- shell blocks ----------------------------------------------------------------------------------------------------

PLACEHOLDER = re.compile(r"<([A-Za-z][\w -]*)>")
PLACEHOLDER_TOKEN = re.compile(r"__placeholder_\w+?__")
OPERATORS = {"&&", "||", ";", "|", "(", ")", "&", ";;"}
#: Top-level folders of the repository: a token starting with one names a file that must exist.
REPO_FOLDERS = ("recipes/", "tests/", "benchmarks/", "experiments/", "trl_ext/", "docs/", ".ci/")
#: ``trl-ext`` subcommands whose ``--help`` needs an optional extra (vLLM).
HELP_NEEDS_EXTRA = {"vllm-serve"}


@dataclass
class ShellFacts:
    """What shell commands are checked against."""

    root: Path
    commands: frozenset[str]  # trl-ext subcommands
    extras: frozenset[str]  # pyproject optional-dependency extras
    trainers: frozenset[str]  # registered trainer names


@dataclass
class ShellReport:
    problems: list[str] = field(default_factory=list)
    cli_runs: list[list[str]] = field(default_factory=list)  # cheap `trl-ext` commands, run for real
    train_args: list[list[str]] = field(default_factory=list)  # train command lines, parsed


def shell_commands(source: str, console: bool = False) -> list[list[str]]:
    """The simple commands of a shell block, as token lists (comments dropped, continuations joined, ``<x>``
    placeholders as ``__placeholder_x__``, a subshell's parentheses as ``["("]`` and ``[")"]``)."""
    text = source
    if console:  # console transcripts: only the `$ ` lines are commands
        text = "\n".join(line[2:] for line in source.splitlines() if line.startswith("$ "))
    text = re.sub(r"\\\n", " ", text)
    text = PLACEHOLDER.sub(lambda m: "__placeholder_" + re.sub(r"\W", "_", m[1]) + "__", text)
    commands = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for token in lexer:
            if token in OPERATORS:
                commands += [command, [token]] if token in "()" else [command]  # subshells stay visible
                command = []
            else:
                command.append(token)
        commands.append(command)
    stripped = []
    for command in commands:
        while command and re.match(r"^[A-Za-z_]\w*=", command[0]):  # VAR=value prefixes
            command = command[1:]
        if command:
            stripped.append(command)
    return stripped


def _exists(path: str, root: Path) -> bool:
    path = path.removeprefix("./")
    pattern = PLACEHOLDER_TOKEN.sub("*", path)
    return any(root.glob(pattern)) if pattern != path else (root / path).exists()


def _in_repository(path: str, facts: ShellFacts) -> bool:
    """A script exists (a repository-folder path that does not is already reported by the path check)."""
    return path.removeprefix("./").startswith(REPO_FOLDERS) or (facts.root / path).exists()


def _option_values(args: list[str], option: str) -> list[str]:
    """The values after ``option`` up to the next option (``--trainers a b c``)."""
    if option not in args:
        return []
    values = []
    for token in args[args.index(option) + 1 :]:
        if token.startswith("-"):
            break
        values.append(token)
    return values


def check_shell(source: str, facts: ShellFacts, console: bool = False) -> ShellReport:
    """Static checks of a shell block's commands, and the commands to run or parse (see the module docstring)."""
    report = ShellReport()
    root = facts.root
    cwd: Path | None = root  # `cd` moves it; None: somewhere outside the repository
    outer: list[Path | None] = []  # the directories of the enclosing shells
    for command in shell_commands(source, console):
        program, args = command[0], command[1:]
        if command in (["("], [")"]):
            cwd = outer.pop() if program == ")" and outer else cwd
            if program == "(":
                outer.append(cwd)
            continue
        if program == "cd":
            outside = not args or args[0].startswith(("/", "~", "$"))
            cwd = None if outside or cwd is None else cwd / args[0]
            continue
        if cwd is None:
            continue
        for token in command:
            value = token.split("=", 1)[1] if token.startswith("--") and "=" in token else token
            if cwd == root and value.removeprefix("./").startswith(REPO_FOLDERS) and not _exists(value, cwd):
                report.problems.append(f"{' '.join(command)}: {value} does not exist")
        here = ShellFacts(cwd, facts.commands, facts.extras, facts.trainers)
        if program in ("python", "python3") and args[:2] == ["-m", "trl_ext.cli"]:
            program, args = "trl-ext", args[2:]
        elif program in ("python", "python3") and args[:2] == ["-m", "pip"]:
            program, args = "pip", args[2:]
        if program == "trl-ext":
            _check_trl_ext(command, args, here, report)
        elif program == "accelerate" and args[:1] == ["launch"]:
            _check_launch(command, args[1:], here, report)
        elif program in ("python", "python3"):
            _check_python(command, args, here, report)
        elif program in ("pip", "pip3"):
            _check_pip(command, args, here, report)
        elif program in ("bash", "sh") and args and not args[0].startswith("-"):
            if not _in_repository(args[0], here):
                report.problems.append(f"{' '.join(command)}: script {args[0]} is not in the repository")
    return report


def _check_trl_ext(command: list[str], args: list[str], facts: ShellFacts, report: ShellReport) -> None:
    shown = " ".join(command)
    if not args or args[0] in ("--help", "-h", "--version", "-V"):
        report.cli_runs.append(args)
        return
    sub, rest = args[0], args[1:]
    if sub not in facts.commands:
        report.problems.append(f"{shown}: no subcommand {sub!r} (trl-ext has {', '.join(sorted(facts.commands))})")
        return
    for trainer in _option_values(rest, "--trainer") + _option_values(rest, "--trainers"):
        if trainer not in facts.trainers:
            report.problems.append(
                f"{shown}: no trainer {trainer!r} (registered: {', '.join(sorted(facts.trainers))})"
            )
    if "--help" in rest or "-h" in rest:
        if sub not in HELP_NEEDS_EXTRA:
            report.cli_runs.append(args)
    elif sub == "list":
        report.cli_runs.append(args)
    elif sub == "train":
        _parse_train(command, rest, report)


def _parse_train(command: list[str], train_args: list[str], report: ShellReport) -> None:
    if not any(PLACEHOLDER_TOKEN.search(token) or token == "..." for token in command):
        report.train_args.append(train_args)


def _check_launch(command: list[str], args: list[str], facts: ShellFacts, report: ShellReport) -> None:
    if "-m" in args:
        position = args.index("-m")
        module, rest = args[position + 1], args[position + 2 :]
        if module == "trl_ext.cli":
            _check_trl_ext(command, rest, facts, report)
        elif importlib.util.find_spec(module) is None:
            report.problems.append(f"{' '.join(command)}: no module {module}")
        return
    scripts = [i for i, token in enumerate(args) if token.endswith(".py")]
    if not scripts:
        report.problems.append(f"{' '.join(command)}: no script to launch")
        return
    script, rest = args[scripts[0]], args[scripts[0] + 1 :]
    if not _in_repository(script, facts):
        report.problems.append(f"{' '.join(command)}: script {script} is not in the repository")
    elif script == "recipes/train.py":
        _parse_train(command, rest, report)


def _check_python(command: list[str], args: list[str], facts: ShellFacts, report: ShellReport) -> None:
    if not args or args[0] in ("-", "-c"):
        return
    if args[0] == "-m":
        if importlib.util.find_spec(args[1]) is None:
            report.problems.append(f"{' '.join(command)}: no module {args[1]}")
        return
    if not _in_repository(args[0], facts):
        report.problems.append(f"{' '.join(command)}: script {args[0]} is not in the repository")
    elif args[0] == "recipes/train.py":
        _parse_train(command, args[1:], report)


def _check_pip(command: list[str], args: list[str], facts: ShellFacts, report: ShellReport) -> None:
    if args[:1] != ["install"]:
        return
    takes_value = {"-r", "-c", "-i", "--index-url", "--extra-index-url", "-f", "--find-links", "--target", "-t"}
    skip = False
    for token in args[1:]:
        if skip or token.startswith("-"):
            skip = token in takes_value
            continue
        if re.match(r"^trl[-_]ext\b", token):
            report.problems.append(
                f"{' '.join(command)}: trl-ext is not on a package index; from a checkout: pip install -e '.[extra]'"
            )
        elif token.startswith("."):
            extras = re.search(r"\[([^\]]*)\]", token)
            for extra in extras[1].split(",") if extras else []:
                if extra.strip() not in facts.extras:
                    report.problems.append(f"{' '.join(command)}: no extra {extra.strip()!r} in pyproject.toml")


def repository_facts() -> ShellFacts:
    from trl_ext.cli import COMMANDS
    from trl_ext.registry import list_trainers

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return ShellFacts(
        ROOT,
        frozenset(COMMANDS),
        frozenset(pyproject["project"]["optional-dependencies"]),
        frozenset(list_trainers()),
    )


def load_data(block: Block) -> object:
    if block.lang in ("yaml", "yml"):
        return yaml.safe_load(block.source)
    if block.lang == "toml":
        return tomllib.loads(block.source)
    return json.loads(block.source)


# --- the pages' blocks, and the jobs for the worker -------------------------------------------------------------------


def page_blocks(root: Path = ROOT) -> list[Block]:
    return [
        block
        for path in doc_pages(root)
        for block in extract_blocks(path.read_text(encoding="utf-8"), path.relative_to(root).as_posix())
    ]


def worker_jobs(blocks: list[Block], facts: ShellFacts) -> list[dict]:
    """What the worker runs for these blocks; ids are ``<where>`` plus a suffix for a block with several jobs."""
    jobs = []
    for block in blocks:
        try:
            label = parse_label(block)
        except ValueError:
            continue  # reported by test_every_block_has_a_valid_label
        if label.kind == "run":
            options = {flag: True for flag in label.flags} | {"given": list(label.given), "file": label.file}
            jobs.append(
                {"id": block.where, "type": "python", "where": block.where, "source": block.source, "options": options}
            )
        elif label.kind == "parse" and block.lang in PYTHON:
            try:
                imports = python_imports(block.source)
            except SyntaxError:
                continue  # reported by test_python_blocks_parse
            jobs.append({"id": block.where, "type": "imports", "imports": imports})
        elif label.kind == "check":
            report = check_shell(block.source, facts, console=block.lang == "console")
            jobs += [
                {"id": f"{block.where} trl-ext {' '.join(argv)}", "type": "cli", "argv": argv}
                for argv in report.cli_runs
            ]
            jobs += [
                {"id": f"{block.where} train {' '.join(argv)}", "type": "train_args", "argv": argv, "cwd": str(ROOT)}
                for argv in report.train_args
            ]
    return list({job["id"]: job for job in jobs}.values())  # a command a block repeats runs once


def run_worker(jobs: list[dict], workdir: Path) -> dict:
    jobs_path, results_path = workdir / "jobs.json", workdir / "results.json"
    jobs_path.write_text(json.dumps(jobs), encoding="utf-8")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    completed = subprocess.run(
        [sys.executable, str(WORKER), str(jobs_path), str(results_path)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    results = json.loads(results_path.read_text(encoding="utf-8")) if results_path.exists() else {}
    if completed.returncode != 0 or len(results) != len(jobs):
        raise RuntimeError(f"the snippet worker stopped (exit {completed.returncode}): {completed.stderr[-3000:]}")
    return results


BLOCKS = page_blocks()
FACTS = repository_facts()

#: A page with the mistakes readers found in the docs (and some more), for the self-test.
BROKEN_PAGE = """\
Unlabelled:

```python
x = 1
```

<!-- snippet: run -->
```python
from trl_ext import list_advantage_estimators

print(list_advantage_estimators())
args = BaseGRPOConfig(output_dir="out")
```

<!-- snippet: run -->
```python
from trl_ext import BNPOConfig

args = BNPOConfig(output_dir="bnpo", num_generations=16)
```

<!-- snippet: run -->
```python
def broken(:
    pass
```

<!-- snippet: parse -->
```python
trainer = Trainer(model=...)
```

<!-- snippet: parse -- placeholders -->
```python
from trl_ext import NoSuchTrainer
```

<!-- snippet: run; given=nonexistent -->
```python
print(nonexistent)
```

<!-- snippet: check -->
```bash
pip install "trl-ext[tracking]"
pip install -e ".[no_such_extra]"
trl-ext trian --config recipes/grpo/quickstart.yaml
trl-ext train --config recipes/grpo/missing.yaml
trl-ext compare --trainers grpo nosuch --config recipes/grpo/quickstart.yaml
python benchmarks/missing.py
python search_r1/retrieval_server.py
accelerate launch --config_file recipes/accelerate_configs/nope.yaml recipes/train.py --config recipes/<trainer>/<task>.yaml
trl-ext train --config recipes/grpo/quickstart.yaml --no_such_field 1
```

<!-- snippet: parse -- an example -->
```yaml
a: [1, 2
```

<!-- snippet: text -->
```bash
echo "a shell block is checked or explained"
```
"""

SELFTEST_BLOCKS = extract_blocks(BROKEN_PAGE, "selftest.md")
#: One good block next to the broken ones: the worker must tell them apart.
GOOD_PAGE = """\
<!-- snippet: run; given=my_reward -->
```python
from trl_ext import list_trainers

assert "grpo" in list_trainers() and my_reward(["abc"]) == [1.0]
```

<!-- snippet: check -->
```bash
trl-ext list
trl-ext train --config recipes/grpo/quickstart.yaml --max_steps 3
(cd /tmp && python engine_throughput.py)
accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/train.py --config recipes/<trainer>/<task>.yaml
cd benchmarks && python memory.py --help
```
"""
GOOD_BLOCKS = extract_blocks(GOOD_PAGE, "selftest-good.md")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    """Every worker job of the pages and of the self-test pages, run once."""
    jobs = worker_jobs(BLOCKS + SELFTEST_BLOCKS + GOOD_BLOCKS, FACTS)
    return run_worker(jobs, tmp_path_factory.mktemp("snippets"))


def _ids(blocks: list[Block]) -> list[str]:
    return [block.where for block in blocks]


def _labelled(kind: str, languages: set[str] | None = None) -> list[Block]:
    chosen = []
    for block in BLOCKS:
        try:
            label = parse_label(block)
        except ValueError:
            continue
        if label.kind == kind and (languages is None or block.lang in languages):
            chosen.append(block)
    return chosen


def _failures(results: dict, prefix: str) -> list[str]:
    return [
        f"{job}:\n{outcome['error']}"
        for job, outcome in results.items()
        if job.startswith(prefix) and not outcome["ok"]
    ]


# --- the pages ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", BLOCKS, ids=_ids(BLOCKS))
def test_every_block_has_a_valid_label(block):
    parse_label(block)


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if b.lang in PYTHON], ids=_ids([b for b in BLOCKS if b.lang in PYTHON])
)
def test_python_blocks_parse(block):
    ast.parse(block.source, filename=block.where)


RUN_BLOCKS = _labelled("run")


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=_ids(RUN_BLOCKS))
def test_python_block_runs(block, results):
    outcome = results[block.where]
    assert outcome["ok"], f"{block.where} raised:\n{outcome['error']}"
    label = parse_label(block)
    if re.search(r"\.train\(", block.source):
        expected = ["skipped"] if "no-train" in label.flags else ["trained"]
        assert outcome["train"] == expected, f"{block.where}: train() calls {outcome['train']}, expected {expected}"


PARSE_PYTHON = _labelled("parse", PYTHON)


@pytest.mark.parametrize("block", PARSE_PYTHON, ids=_ids(PARSE_PYTHON))
def test_python_block_imports_exist(block, results):
    outcome = results[block.where]
    assert outcome["ok"], f"{block.where}: {outcome['error']}"


PARSE_DATA = _labelled("parse", DATA)


@pytest.mark.parametrize("block", PARSE_DATA, ids=_ids(PARSE_DATA))
def test_data_block_loads(block):
    load_data(block)


CHECK_SHELL = _labelled("check")


@pytest.mark.parametrize("block", CHECK_SHELL, ids=_ids(CHECK_SHELL))
def test_shell_block_commands(block, results):
    report = check_shell(block.source, FACTS, console=block.lang == "console")
    assert not report.problems, "\n".join(report.problems)
    failures = _failures(results, block.where + " ")
    assert not failures, "\n".join(failures)


def test_the_cheap_commands_ran():
    """`trl-ext list`, `--version` and a trainer's `--help` appear in the pages and are among the commands run."""
    runs = {
        " ".join(argv) for block in CHECK_SHELL for argv in check_shell(block.source, FACTS).cli_runs
    }  # fmt: skip
    assert {"list", "--version", "train --trainer grpo --help"} <= runs


def user_facing_files(root: Path = ROOT) -> list[Path]:
    """What a user reads besides the pages' code blocks: the pages, the recipes, and the package (its docstrings and
    messages)."""
    recipes = [path for path in sorted((root / "recipes").rglob("*")) if path.suffix in (".yaml", ".md", ".py")]
    return [*doc_pages(root), *recipes, *sorted((root / "trl_ext").rglob("*.py"))]


def test_nothing_tells_the_user_to_install_trl_ext_from_an_index():
    """trl-ext is not on a package index: an install line is `pip install -e ".[extra]"` from the checkout."""
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in user_facing_files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"trl[-_]ext\[", line)
    ]
    assert not offenders, "\n".join(offenders)


#: A citation of a file the user does not have: the team's shared folder, a design spec, or a section (§) of one.
OUTSIDE_CITATION = re.compile(r"(?<![\w-])(?:\.\./)*shared/|(?<![\w-])specs/|§")


def outside_citations(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of every line that cites something outside the repository; a section sign is allowed on a
    line that names the paper it points into."""
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), 1)
        if OUTSIDE_CITATION.search(line)
        and not (set(OUTSIDE_CITATION.findall(line)) == {"§"} and re.search(r"paper|arXiv", line))
    ]


def test_no_page_recipe_or_docstring_cites_a_file_outside_the_repository():
    """Pages, recipe headers and the package state their rules; they do not send the reader to files the reader lacks
    (shared/specs/*.md, "spec §6")."""
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line}"
        for path in user_facing_files()
        for number, line in outside_citations(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, "\n".join(offenders)


def test_outside_citations_are_recognised():
    text = (
        "Specification: `shared/specs/bnpo.md`.\n"
        "see ../shared/notes.md\n"
        "# mirroring the paper's setup (specs/hapo.md §6)\n"
        "the statistics of §2.2\n"
        "as in §3 of the paper (arXiv 2509.16591)\n"
        "tests/shared_fixtures.py and shared_state/ are ours\n"
    )
    assert [number for number, _ in outside_citations(text)] == [1, 2, 3, 4]


# --- the checks themselves ----------------------------------------------------------------------------------------------


def test_extract_blocks_reads_labels_languages_and_indented_fences():
    page = "Intro\n\n<!-- snippet: text -->\n\n~~~~\nA = 1\n~~~~\n\n1. Step:\n\n    <!-- snippet: check -->\n    ```bash\n    trl-ext list\n    ```\n"
    first, second = extract_blocks(page, "p.md")
    assert (first.line, first.lang, first.source, first.label_text) == (5, "", "A = 1\n", "text")
    assert (second.line, second.lang, second.source, second.label_text) == (12, "bash", "trl-ext list\n", "check")
    with pytest.raises(ValueError, match="never closed"):
        extract_blocks("```python\nx = 1\n", "p.md")


def test_labels_are_validated():
    def label(text, lang="python", source="x = 1\n"):
        return parse_label(Block("p.md", 1, lang, source, text))

    assert label("run; tiny-model; given=dataset,my_reward; no-train") == Label(
        "run", frozenset({"tiny-model", "no-train"}), ("dataset", "my_reward")
    )
    assert label("parse -- placeholders").reason == "placeholders"
    assert label("text", lang="").kind == "text"
    for text, lang, message in [
        (None, "python", "no `<!-- snippet"),
        ("execute", "python", "unknown kind"),
        ("check", "python", "does not apply"),
        ("run", "bash", "does not apply"),
        ("text -- not python", "python", "not `python`"),
        ("parse", "python", "needs a reason"),
        ("text", "bash", "needs a reason"),
        ("run; fast", "python", "unknown option"),
        ("run; given=model", "python", "no stand-in"),
        ("run; file=/tmp/x.py", "python", "relative module path"),
        ("parse; tiny-model -- x", "python", "options are for `run`"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            label(text, lang)


def test_shell_commands_split_lines_operators_and_placeholders():
    source = 'A=1 B=2 trl-ext list && python -m pytest -q  # comment\nfoo \\\n  --bar "x y" | tee log\n'
    assert shell_commands(source) == [
        ["trl-ext", "list"],
        ["python", "-m", "pytest", "-q"],
        ["foo", "--bar", "x y"],
        ["tee", "log"],
    ]
    assert shell_commands("accelerate launch recipes/train.py --config recipes/<trainer>/<task>.yaml") == [
        [
            "accelerate",
            "launch",
            "recipes/train.py",
            "--config",
            "recipes/__placeholder_trainer__/__placeholder_task__.yaml",
        ]
    ]
    assert shell_commands("$ trl-ext list\ngrpo  ...\n", console=True) == [["trl-ext", "list"]]
    assert shell_commands("(cd /tmp && ls) && ls") == [["("], ["cd", "/tmp"], ["ls"], [")"], ["ls"]]


def test_the_checks_catch_what_a_reader_would_hit(results):
    """The hand-made broken page fails every check it should, and the good one next to it passes."""
    by_line = {block.line: block for block in SELFTEST_BLOCKS}
    label_errors = {}
    for block in SELFTEST_BLOCKS:
        try:
            parse_label(block)
        except ValueError as error:
            label_errors[block.line] = str(error)
    assert sorted(label_errors) == [3, 29, 39, 62]  # unlabelled, parse without reason, unknown stand-in, text bash
    assert "no `<!-- snippet" in label_errors[3] and "needs a reason" in label_errors[29]

    # A python block that does not parse.
    with pytest.raises(SyntaxError):
        ast.parse(by_line[23].source)
    # The NameError readers hit in getting-started.md, and the BNPOConfig that is invalid on one process.
    assert "NameError: name 'BaseGRPOConfig' is not defined" in results["selftest.md:8"]["error"]
    assert "must be divisible by num_generations (16)" in results["selftest.md:16"]["error"]
    # An import of a name trl_ext does not have.
    assert "not found: trl_ext.NoSuchTrainer" in results["selftest.md:34"]["error"]

    report = check_shell(by_line[44].source, FACTS)
    problems = "\n".join(report.problems)
    for expected in [
        "trl-ext is not on a package index",
        "no extra 'no_such_extra'",
        "no subcommand 'trian'",
        "recipes/grpo/missing.yaml does not exist",
        "no trainer 'nosuch'",
        "benchmarks/missing.py does not exist",
        "script search_r1/retrieval_server.py is not in the repository",
        "recipes/accelerate_configs/nope.yaml does not exist",
    ]:
        assert expected in problems, problems
    assert len(report.problems) == 8, problems
    unknown_field = results["selftest.md:44 train --config recipes/grpo/quickstart.yaml --no_such_field 1"]
    assert not unknown_field["ok"] and "--no_such_field" in unknown_field["error"]
    with pytest.raises(yaml.YAMLError):
        load_data(by_line[57])

    # The good page: its python ran with the stand-in, its commands pass, `trl-ext list` printed the table.
    assert results["selftest-good.md:2"]["ok"], results["selftest-good.md:2"]["error"]
    good = check_shell(GOOD_BLOCKS[1].source, FACTS)
    assert not good.problems and good.cli_runs == [["list"]]
    assert good.train_args == [["--config", "recipes/grpo/quickstart.yaml", "--max_steps", "3"]]
    assert "grpo" in results["selftest-good.md:9 trl-ext list"]["output"]
    assert results["selftest-good.md:9 train --config recipes/grpo/quickstart.yaml --max_steps 3"]["ok"]
