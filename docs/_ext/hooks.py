"""mkdocs hooks: the plots under ``experiments/results/`` and ``benchmarks/results/`` in the site.

The pages show plots that the experiments write next to their JSON, outside ``docs/``
(``![...](../experiments/results/x.png)``), so that the same Markdown renders on a code host. mkdocs only knows files
under ``docs/``: this hook adds those plots to the site at the same repository-relative path and points the pages'
links at them. Any other link that leaves ``docs/`` is left alone, and the strict build reports it.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

#: Repository folders whose plots are mirrored into the site, under the same relative path.
MIRRORED = ("experiments/results", "benchmarks/results")
#: A Markdown link or image target: ``](target)`` (no title).
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _repo_root(config) -> Path:
    return Path(config["docs_dir"]).resolve().parent


def on_files(files, config):
    root = _repo_root(config)
    for folder in MIRRORED:
        for path in sorted((root / folder).glob("*.png")):
            uri = path.relative_to(root).as_posix()
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    page_dir = posixpath.dirname(page.file.src_uri)

    def relink(match: re.Match) -> str:
        target = match.group(1)
        if "://" in target or target.startswith(("#", "/")):
            return match.group(0)
        # Where the link points, relative to the repository root (the page lives at docs/<src_uri>).
        repo_path = posixpath.normpath(posixpath.join("docs", page_dir, target))
        if repo_path.startswith("docs/") or files.get_file_from_path(repo_path) is None:
            return match.group(0)
        return f"]({posixpath.relpath(repo_path, page_dir or '.')})"

    return LINK.sub(relink, markdown)
