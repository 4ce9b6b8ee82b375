"""The walkthrough runs as written: the `bash` blocks of docs/walkthrough.md, read from the page,
run in order in a fresh empty directory, as a user with the venv active runs them (its `bin`
first on PATH, tracked in the store's own MLflow database), and print what the page says. The
README's short walkthrough is the same list of commands, and the page's quoted output belongs
to those commands, so neither can drift from what is run here."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "walkthrough.md"
README = ROOT / "README.md"
GENERATED = re.compile(
    r"<!-- generated:walkthrough -->\n(.*?)<!-- /generated:walkthrough -->", re.S
)


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, re.M | re.S)


def commands(blocks: list[str]) -> list[str]:
    """One command per line (a trailing backslash continues it); blank and comment lines skipped."""
    found, pending = [], ""
    for line in "\n".join(blocks).splitlines():
        pending = f"{pending}\n{line}" if pending else line
        if pending.endswith("\\"):
            continue
        if pending.strip() and not pending.lstrip().startswith("#"):
            found.append(pending)
        pending = ""
    assert not pending, f"a command ends in a backslash: {pending!r}"
    return found


def words(command: str) -> list[str]:
    """What the shell runs, without the trailing comment."""
    return shlex.split(command, comments=True)


def page_commands() -> list[str]:
    return commands(bash_blocks(PAGE.read_text()))


def readme_walkthrough() -> str:
    text = README.read_text()
    section = re.search(r"^## A short walkthrough\n(.*?)(?=^## )", text, re.M | re.S)
    assert section, "README.md has no '## A short walkthrough' section"
    return section.group(1)


def console_commands(block: str) -> list[list[str]]:
    return [words(line[2:]) for line in block.splitlines() if line.startswith("$ ")]


def documented_predict_rows() -> tuple[list[str], list[list[str]]]:
    """The `dmt predict` table the page quotes (outside the generated block): the command's
    words and the table's rows, each a list of cells."""
    text = GENERATED.sub("", PAGE.read_text())
    for block in re.findall(r"^```console\n(.*?)^```", text, re.M | re.S):
        lines = block.splitlines()
        if lines and lines[0].startswith("$ dmt predict"):
            return words(lines[0][2:]), [line.split() for line in lines[1:] if line.strip()]
    raise AssertionError("docs/walkthrough.md quotes no `$ dmt predict` output")


def test_every_command_of_the_page_is_one_shell_line() -> None:
    found = page_commands()
    assert found, "docs/walkthrough.md has no ```bash block"
    for command in found:
        assert words(command), command  # shlex parses it: no open quote
    assert any(words(c)[:2] == ["dmt", "predict"] for c in found)
    assert not any("--no-tracking" in words(c) for c in found)  # the page runs tracked


def test_the_readme_walkthrough_is_the_page_s() -> None:
    readme = [words(c) for c in commands(bash_blocks(readme_walkthrough()))]
    assert readme == [words(c) for c in page_commands()], (
        "README's '## A short walkthrough' must run the same commands as docs/walkthrough.md"
    )


def test_the_quoted_output_belongs_to_the_commands_run() -> None:
    """The generated output (examples/refresh_readme.py) and the quoted predict table are of
    commands that the page's bash blocks run, in that order."""
    generated = GENERATED.search(PAGE.read_text())
    assert generated, "docs/walkthrough.md lost its generated:walkthrough block"
    run = iter(words(c) for c in page_commands())
    for shown in [*console_commands(generated.group(1)), documented_predict_rows()[0]]:
        assert any(shown == command for command in run), f"shown but not run in order: {shown}"


def check(argv: list[str], out: str, err: str, cwd: Path) -> str | None:
    """What a user would look for in a command's output; the check's name, or None."""
    both = out + err
    match argv:
        case ["dmt", "tasks", *_]:
            assert "digits.class" in out and "built-in" in out, out
        case ["dmt", "add-task", task, *_]:
            assert re.search(rf"^Added {re.escape(task)} as version \d+ in ", both, re.M), both
        case ["dmt", "status", *_]:
            assert "Input 1x8x8" in out, out
        case ["dmt", "eval", *_]:
            assert out.splitlines()[0].split()[0] == "task", out
        case ["dmt", "remove-task", task, *_]:
            assert f"Removed {task}; store is now at version" in out, out
        case ["dmt", "history", *_]:
            assert re.search(r"^1\s.*\binit\b", out, re.M), out
        case ["dmt", "rollback", version, *_]:
            assert f"Rolled back to version {version}" in out and "Publish" in out, out
        case ["dmt", "connections", *_]:
            assert "stage 1 → 2" in out, out
        case ["dmt", "predict", *inputs] if "--json" in inputs:
            document = json.loads(out)
            names = document["inputs"]
            assert len(names) == expected_inputs(cwd, [i for i in inputs if i != "--json"])
            assert document["tasks"], document
            for task, result in document["tasks"].items():
                assert len(result["prediction"]) == len(names), task
                assert len(result["probabilities"]) == len(names), task
                for row in result["probabilities"]:
                    assert sum(row) == pytest.approx(1, abs=1e-4), (task, row)
            return "predict --json"
        case ["dmt", "predict", *_]:
            shown, rows = documented_predict_rows()
            if argv == shown:
                ran = [line.split() for line in out.splitlines() if line.strip()]
                assert [r[0] for r in ran] == [r[0] for r in rows], out  # header, rule, inputs
                differ = [(r, d) for r, d in zip(ran[2:], rows[2:], strict=True) if r != d]
                # Another training run may miss one digit; the page's answers are the right ones.
                assert len(differ) <= 1, f"predictions differ from the page's: {differ}"
                return "predict table"
    return None


def expected_inputs(cwd: Path, inputs: list[str]) -> int:
    """How many images the inputs hold: one per image file, N per N-image .npy array."""
    import numpy as np

    return sum(
        len(np.load(cwd / name, mmap_mode="r")) if name.endswith(".npy") else 1 for name in inputs
    )


@pytest.mark.slow
def test_the_walkthrough_runs_as_written(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("the walkthrough is written for bash")
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "dmt").is_file(), f"no dmt console script next to {sys.executable}"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    checked = []
    for command in page_commands():
        done = subprocess.run(
            command,
            shell=True,
            executable=bash,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, (
            f"{command!r} exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        )
        checked.append(check(words(command), done.stdout, done.stderr, tmp_path))
    assert {"predict table", "predict --json"} <= set(checked), checked
    assert (tmp_path / "dmt-store" / "mlflow.db").is_file()  # tracked, inside the store
    assert not (tmp_path / "mlruns").exists()
