"""The package's shape: what the README's layout section and the project's
size limits promise (a README that names a moved file misleads users)."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "speechbrain_s4m"


def _layout_entries():
    """(path words, description) per line of the README's layout block."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Where things live", 1)[1]
    block = section.split("```", 2)[1]
    entries, prefix = [], ""
    for line in block.splitlines()[1:]:
        indent = len(line) - len(line.lstrip())
        if not line.strip() or indent >= 20:  # blank or a wrapped description
            continue
        head, _, description = line.strip().partition("  ")
        words = [w.strip() for w in head.split(",") if w.strip()]
        if indent == 0:  # a top-level folder; the package's lines follow it
            prefix = head if head == "speechbrain_s4m/" else ""
        else:
            words = [prefix + w for w in words]
        entries.append((words, description))
    return entries


def _paths(word):
    return list(ROOT.glob(re.sub(r"<[^>]+>", "*", word).rstrip("/")))


def test_readme_layout_names_existing_paths():
    for words, description in _layout_entries():
        for word in words:
            assert _paths(word), f"README layout names {word}: not in the tree"
        # files named in a folder's description, e.g. "interface.py (...)"
        folder = words[0]
        if folder.endswith("/") and len(words) == 1:
            for name in re.findall(r"\b\w+\.py\b", description):
                assert _paths(folder + name), (folder, name)


def test_readme_layout_covers_every_module():
    listed = [
        p for words, _ in _layout_entries() for w in words for p in _paths(w)
    ]
    for module in PACKAGE.rglob("*.py"):
        if module.name == "__init__.py" and module.parent == PACKAGE:
            continue
        assert any(module == p or p in module.parents for p in listed), (
            f"{module.relative_to(ROOT)} is missing from the README's layout"
        )


def test_package_size_limits():
    sizes = {
        str(p.relative_to(PACKAGE)): len(p.read_text().splitlines())
        for p in PACKAGE.rglob("*.py")
    }
    assert sum(sizes.values()) <= 12_000, sum(sizes.values())
    # nnet/ssm.py holds both S4 kernels and their recurrences: the one
    # module allowed to be longer
    long = {k: n for k, n in sizes.items() if n > 600 and k != "nnet/ssm.py"}
    assert not long, long


def test_readme_and_docs_budgets():
    assert (ROOT / "README.md").stat().st_size <= 10_000
    docs = sum(p.stat().st_size for p in (ROOT / "docs").rglob("*.md"))
    assert docs <= 60_000, docs
