"""A Sphinx extension for the book's HTML: every page must load without a console error.

With jupyter-book 1.0.4, sphinx-thebe 0.3.1 and sphinx-togglebutton, each page received their
inline configuration scripts twice; sphinx-thebe's declares ``const THEBE_JS_URL``, so the second
copy is an ``Uncaught SyntaxError`` on every page.  :func:`drop_duplicate_scripts` keeps the first
of any exactly repeated script (same file or same inline body, same attributes); nothing else
changes.  Enabled in ``_config.yml`` (``sphinx.extra_extensions``).
"""
from __future__ import annotations


def _key(script) -> tuple:
    attrs = getattr(script, "attributes", {}) or {}
    name = getattr(script, "filename", script) or ""  # an inline script comes with None or "" as its file
    return (str(name), tuple(sorted((k, str(v)) for k, v in attrs.items())))


def drop_duplicate_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for s in scripts:
        k = _key(s)
        if k not in seen:
            seen.add(k)
            kept.append(s)
    context["script_files"] = kept


def setup(app):
    # early: html-page-context stops at the first handler that returns a template name
    app.connect("html-page-context", drop_duplicate_scripts, priority=1)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
