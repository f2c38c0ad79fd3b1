"""MkDocs hooks for the zarr_torch site (see mkdocs.yml).

- The benchmark plots are served from ``benchmarks/results/`` as they are, never copied
  into ``docs/``: ``on_files`` adds each PNG as ``assets/benchmarks/<name>.png``.
- The docstrings use Sphinx roles (``:class:`SelectionIndex```); Markdown renders them
  as ``:class:<code>SelectionIndex</code>``. ``on_page_content`` drops the role name.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
PLOTS = ROOT / "benchmarks" / "results"
#: a role, then its target; ``~`` shows only the target's last component, as Sphinx does.
ROLE = re.compile(r":(?:class|meth|func|mod|attr|data|exc|obj):<code>(?:~[\w.]*\.)?([^<]*)</code>")


def on_files(files: Files, config) -> Files:
    for png in sorted(PLOTS.glob("*.png")):
        files.append(File.generated(config, f"assets/benchmarks/{png.name}", abs_src_path=str(png)))
    return files


def on_page_content(html: str, page, config, files) -> str:
    return ROLE.sub(r"<code>\1</code>", html)
