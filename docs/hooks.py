"""mkdocs hook: SUMMARY.md (the navigation docs/gen_pages.py writes) is read, not published."""

from mkdocs.structure.files import InclusionLevel


def on_nav(nav, config, files):
    summary = files.get_file_from_path("SUMMARY.md")
    if summary is not None:
        summary.inclusion = InclusionLevel.EXCLUDED
    return nav
