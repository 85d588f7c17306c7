"""Every package folder is listed in pyproject.toml, so a built wheel carries it."""
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    mapping = cfg["package-dir"]
    found = set()
    for pkg, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            name = ".".join([pkg, *rel.parts]) if rel.parts else pkg
            if not any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
                found.add(name)
    # sub-packages mapped on their own are found twice; compare on names
    assert found - listed == set(), f"add to [tool.setuptools] packages: {sorted(found - listed)}"
