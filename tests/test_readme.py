"""The README's commands are the ones CI runs, and they work in a clone placed anywhere."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_test_command() -> str:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.S)
    commands = [line for block in blocks for line in block.splitlines() if "pytest" in line]
    assert len(commands) == 1, commands
    return commands[0].split("&&")[-1].strip()


def test_ci_runs_the_readme_test_command():
    command = _readme_test_command()
    assert command.endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    # CI may put environment variables in front (HF_HUB_OFFLINE=1), nothing else.
    calls = [line for line in ci if line.endswith(command)]
    assert len(calls) == 1, f".ci/run does not call the README's test command {command!r}"
    assert re.fullmatch(r"([A-Z_]+=\S+ )*", calls[0][: -len(command)]), calls[0]


def test_the_readme_test_command_leaves_the_hub_reachable():
    # A fresh clone has no ../shared/data: rt-polarity then comes from the Hub.
    assert "HF_HUB_OFFLINE" not in _readme_test_command()
