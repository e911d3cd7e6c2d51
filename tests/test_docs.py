"""The documentation names every part of the house: each module of the package and each rule file
appears in the README or a page of docs/, and every page the README links exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def documentation() -> str:
    return "\n".join(path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])


def test_every_module_and_rule_file_is_named_in_the_docs():
    text = documentation()
    modules = [path.stem for path in (ROOT / "src/polarmap").glob("*.py") if path.stem != "__init__"]
    rules = [path.name for path in (ROOT / "workflow/rules").glob("*.smk")]
    unnamed = [m for m in modules if not re.search(rf"\b{m}\b", text)]
    unnamed += [r for r in rules if r not in text and not re.search(rf"\b{r.removesuffix('.smk')}\b", text)]
    assert not unnamed, f"name these in README.md or docs/: {unnamed}"


def test_the_readme_links_pages_that_exist():
    linked = set(re.findall(r"docs/[\w-]+\.md", (ROOT / "README.md").read_text()))
    pages = {f"docs/{path.name}" for path in (ROOT / "docs").glob("*.md")}
    assert linked >= pages and not linked - pages, (linked ^ pages)
