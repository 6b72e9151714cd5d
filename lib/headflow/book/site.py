"""The built HTML book as a reader gets it: nothing is fetched from the network.

Pages with math load MathJax from the book itself (``_config.yml`` points ``mathjax_path`` at
``_static/mathjax/``); :func:`local_mathjax` copies Debian's MathJax (package ``libjs-mathjax``)
there after a build, and only when some page uses it.

    python -m headflow.site _build/html
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

MATHJAX_SOURCE = Path("/usr/share/javascript/mathjax")
MATHJAX_REF = "_static/mathjax/MathJax.js"


def pages_with_math(html: Path) -> list[Path]:
    return [p for p in sorted(Path(html).rglob("*.html")) if MATHJAX_REF in p.read_text(errors="replace")]


def local_mathjax(html: Path, source: Path = MATHJAX_SOURCE) -> list[Path]:
    """Copy MathJax into ``html/_static/mathjax`` if any page loads it; returns those pages."""
    pages = pages_with_math(html)
    target = Path(html) / "_static" / "mathjax"
    if pages and not (target / "MathJax.js").exists():
        if not (source / "MathJax.js").exists():
            raise FileNotFoundError(f"{len(pages)} page(s) use math but {source} has no MathJax: install the Debian "
                                    "package libjs-mathjax (make setup does)")
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("test", "unpacked"), dirs_exist_ok=True)
    return pages


def main(argv=None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m headflow.site HTML_DIR")
    pages = local_mathjax(Path(args[0]))
    print(f"[headflow.site] {len(pages)} page(s) with math; MathJax served from the book" if pages
          else "[headflow.site] no page uses math")


if __name__ == "__main__":
    main()
