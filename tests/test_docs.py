"""The documentation cannot drift from the code: the command reference is what the commands
print, every command has its section, the site builds with --strict, every relative link
leads somewhere, and the README stays short."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _refresh_docs():
    spec = importlib.util.spec_from_file_location(
        "refresh_docs", ROOT / "examples" / "refresh_docs.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def helps() -> dict[str | None, str]:
    """What every command prints for --help now: one real run each, shared by the tests."""
    return _refresh_docs().help_texts()


def test_the_command_reference_is_what_the_commands_print(helps) -> None:
    refresh = _refresh_docs()
    page = refresh.COMMANDS_PAGE.read_text()
    now = refresh.refreshed(page, helps)
    assert now == page, "run python examples/refresh_docs.py:\n" + refresh.drift(page, now)


def test_an_edited_help_block_is_caught(helps) -> None:
    refresh = _refresh_docs()
    page = refresh.COMMANDS_PAGE.read_text()
    edited = page.replace("Create an empty store.", "Create a store.", 1)
    assert edited != page and refresh.refreshed(edited, helps) == page
    assert "-  init         Create a store." in refresh.drift(edited, page)


def test_every_command_has_its_section() -> None:
    from dmtcore.cli import cli

    page = (ROOT / "docs" / "commands.md").read_text()
    missing = [name for name in cli.commands if f"## dmt {name}\n" not in page]
    assert not missing, f"commands without a section in docs/commands.md: {missing}"


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (it is in the test extra)")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "architecture" / "index.html").is_file()


def test_the_readme_is_short_and_every_relative_link_leads_somewhere() -> None:
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) < 300
    broken = []
    for page in [readme, *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_the_readme_keeps_the_two_commands_that_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = (
        "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest"
    )
    assert test_command in readme and test_command in ci
    assert (
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/python "
        "examples/quickstart.py" in readme
    )
