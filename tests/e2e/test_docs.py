"""Every command and code block of README.md, docs/ and the result pages runs as written, or at least parses.

- ``python`` blocks run in a workspace that holds what they name (a tiny ``runs/mae-quickstart`` run and
  its export); a block preceded by ``<!-- docs-test: skip (reason) -->`` is only compiled.
- ``bash`` blocks: ``sslvit`` commands are parsed with ``--print_config`` (config, overrides, types);
  ``python tools/*.py`` and ``python benchmarks/*.py`` commands are parsed by the script's own parser,
  and those that only need the workspace run for real; ``make`` targets must exist.
- Plain blocks that show ``$ sslvit ...`` followed by ``sslvit: error: ...`` must print that line.
- Relative links point to a file that exists, and to a heading of it when they name one.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass

import pytest
import torch

from conftest import REPO, TINY_CONFIGS, load_script
from sslvit.cli import main as sslvit_main
from sslvit.cli import run_cli
from sslvit.methods.beit import fit_kmeans_tokenizer

RESULT_PAGES = sorted((REPO / "benchmarks" / "results").glob("*.md"))  # each table's reproducing command
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *RESULT_PAGES]
FENCE = re.compile(
    r"(?:<!--\s*docs-test:\s*(?P<marker>[^>]*?)\s*-->\s*\n)?"  # an optional marker line before the block
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)\n(?P<body>.*?)^[ \t]*```",
    re.S | re.M,
)
EXTERNAL = {"pip", "pytest", "tensorboard", "column", "cd", "export", "ruff"}  # not ours to check
WORKSPACE_RUN = "runs/mae-quickstart"  # what the workspace fixture provides


@dataclass
class Block:
    file: str
    line: int
    lang: str
    body: str
    marker: str | None

    def __repr__(self) -> str:
        return f"{self.file}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for path in DOCS:
        text = path.read_text()
        for m in FENCE.finditer(text):
            indent = len(m.group("indent"))
            body = "\n".join(line[indent:] for line in m.group("body").splitlines())
            line = text[: m.start("body")].count("\n")
            found.append(Block(str(path.relative_to(REPO)), line, m.group("lang"), body, m.group("marker")))
    return found


def commands(body: str) -> list[list[str]]:
    """The shell commands of a bash block: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def is_placeholder(words: list[str]) -> bool:
    return any("..." in w or "<" in w or "/path/to" in w or "$" in w or "[" in w and "/" in w for w in words)


BLOCKS = blocks()
BASH = [(b, c) for b in BLOCKS if b.lang == "bash" for c in commands(b.body)]
PYTHON = [b for b in BLOCKS if b.lang == "python"]
ERROR_EXAMPLES = [
    (b, line[2:], expected)
    for b in BLOCKS
    if b.lang == ""
    for line, expected in zip(b.body.splitlines(), b.body.splitlines()[1:], strict=False)
    if line.startswith("$ sslvit ") and expected.startswith("sslvit: error: ")
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """What the docs' examples name: seconds-long MAE and CPC runs, the MAE's export, a small tokenizer."""
    root = tmp_path_factory.mktemp("docs")
    for method in ("mae", "cpc"):
        run_cli(
            [
                "fit",
                "--config",
                TINY_CONFIGS[method],
                "--trainer.default_root_dir",
                str(root / f"runs/{method}-quickstart"),
            ]
        )
    load_script("tools/export.py").main(
        ["--checkpoint", str(root / WORKSPACE_RUN / "checkpoints" / "last.ckpt"), "--output", str(root / "exported")]
    )
    patches = torch.randn(256, 4 * 4 * 3, generator=torch.Generator().manual_seed(0))
    fit_kmeans_tokenizer(patches, vocab_size=16, patch_size=4, image_size=32).save(root / "runs" / "tokenizer-cifar10")
    return root


def test_the_docs_hold_commands_and_code():
    assert len(BASH) > 30 and len(PYTHON) >= 6 and len(ERROR_EXAMPLES) >= 3


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


LINKS = [
    (path, target)
    for path in DOCS
    for target in re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", path.read_text()))
    if not target.startswith(("http://", "https://", "mailto:"))
]


@pytest.mark.parametrize("path,target", LINKS, ids=[f"{p.relative_to(REPO)}->{t}" for p, t in LINKS])
def test_relative_link(path, target):
    file, _, fragment = target.partition("#")
    linked = (path.parent / file).resolve() if file else path
    assert linked.exists(), f"{path.relative_to(REPO)}: {target} does not exist"
    if fragment and linked.is_file():
        headings = re.findall(r"^#+ (.+)$", FENCE.sub("", linked.read_text()), re.M)
        assert fragment in {anchor(h) for h in headings}, f"{path.relative_to(REPO)}: no heading #{fragment}"


def test_readme_is_short():
    lines = len((REPO / "README.md").read_text().splitlines())
    assert lines <= 250, f"README.md has {lines} lines; move details into docs/"


@pytest.mark.parametrize("block,words", BASH, ids=[f"{b}:{' '.join(c)[:60]}" for b, c in BASH])
def test_bash_command(block, words, workspace, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("SSLVIT_CACHE", str(workspace / "cache"))
    while re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):  # VAR=value before a command: its environment
        words = words[1:]
    if words[-1] == "&":  # a job in the background: the same command
        words = words[:-1]
    if words[0] == "srun":
        words = words[1:]
    if words[0] == "torchrun":
        words = ["sslvit", *words[words.index("sslvit.cli") + 1 :]]
    head = words[0]
    if head in EXTERNAL:
        return
    if head == "make":
        targets = re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M)
        assert set(words[1:]) <= set(targets), f"{block}: no make target {words[1:]}"
    elif head == "sslvit":
        config = words[words.index("--config") + 1]
        if is_placeholder([config]):
            return
        assert (REPO / config).is_file(), f"{block}: {config} does not exist"
        with pytest.raises(SystemExit) as done:
            run_cli([*words[1:], "--print_config"])
        assert done.value.code in (0, None), f"{block}: {' '.join(words)}\n{capsys.readouterr().err[-2000:]}"
    elif head in ("python", "python3") and words[1].startswith(("tools/", "benchmarks/")):
        script, args = load_script(words[1]), words[2:]
        script.build_parser().parse_args(args)  # every option exists and has the right type
        runs_here = WORKSPACE_RUN in " ".join(args) and "../shared" not in " ".join(args)
        if words[1].startswith("tools/") and runs_here and not is_placeholder(args):
            monkeypatch.chdir(workspace)
            script.main(args)
    elif head.startswith("benchmarks/"):
        assert os.access(REPO / head, os.X_OK), f"{block}: {head} is not an executable script"
    else:
        pytest.fail(f"{block}: unknown command {head!r}; teach tests/e2e/test_docs.py how to check it")


@pytest.mark.parametrize("block", PYTHON, ids=repr)
def test_python_block(block, workspace, monkeypatch):
    code = compile(block.body, str(block), "exec")
    if block.marker and block.marker.startswith("skip"):
        return
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("SSLVIT_CACHE", str(workspace / "cache"))
    exec(code, {"__name__": "__docs__"})


@pytest.mark.parametrize("block,command,expected", ERROR_EXAMPLES, ids=[f"{b}" for b, _, _ in ERROR_EXAMPLES])
def test_documented_errors_are_printed(block, command, expected, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(REPO)
    words = shlex.split(command)
    monkeypatch.setattr(sys, "argv", [*words, "--trainer.default_root_dir", str(tmp_path)])
    with pytest.raises(SystemExit) as done:
        sslvit_main()
    assert done.value.code == 2
    printed = capsys.readouterr().err.strip().splitlines()[-1]
    for part in expected.split("…"):
        assert part.strip() in printed, f"{block}: documented {expected!r}, printed {printed!r}"
