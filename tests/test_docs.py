"""The README and docs/ as a user reads them: every relative link leads to a file, and
every command block marked `<!-- runnable -->` runs as printed (with `--cfg` appended
where the marker says `runnable: --cfg`: those compose and print the config)."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"<!-- runnable(?:: (?P<extra>[^>]*?))? -->\n```[a-z]*\n(?P<body>.*?)```",
                   re.S)


def test_every_relative_link_in_the_docs_leads_to_a_file():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def _commands():
    for page in PAGES:
        for block in BLOCK.finditer(page.read_text()):
            extra = shlex.split(block["extra"] or "")
            for line in block["body"].splitlines():
                line = line.split("  #")[0].strip()
                if line.startswith("pretrainer "):
                    yield page.name, [*shlex.split(line), *extra]
                elif line.startswith("python -m pretrainer"):
                    yield page.name, [sys.executable, *shlex.split(line)[1:]]


COMMANDS = list(_commands())


def test_the_readme_and_the_configuration_page_have_runnable_blocks():
    assert {page for page, _ in COMMANDS} >= {"README.md", "configuration.md"}


@pytest.mark.parametrize("page,argv", COMMANDS, ids=[" ".join(a[:3]) for _, a in COMMANDS])
def test_each_runnable_command_runs_as_printed(page, argv, tmp_path):
    if argv[0] == "pretrainer":
        argv = [str(Path(sys.executable).with_name("pretrainer")), *argv[1:]]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, f"{page}: {' '.join(argv)}\n{proc.stdout[-800:]}{proc.stderr[-1500:]}"
