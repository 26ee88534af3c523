"""Docs and CLI agree: every ``m3ad-rl …`` line in a shell block of README.md and docs/*.md parses.

A flag, choice or subcommand the docs show but the CLI refuses is a failure naming the file, line
and command; a ``--config`` / ``--reward-config`` / ``--variants`` file a command names must exist,
both in the checkout and among the configs shipped in the package. Nothing is run: the real
argparse parser reads each command, so this is fast.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from m3ad_rl.cli import build_parser
from m3ad_rl.core.errors import UsageError
from m3ad_rl.core.package_data import config_file

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}  # fenced blocks whose lines are commands
OPERATORS = {"&&", "||", ";", "|", "&", "(", ")"}
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w-]*)")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
CONFIG_DIRS = ("eval", "reproduce", "rewards", "sweeps", "train")  # configs/<dir>/…, also a shipped name


@dataclass(frozen=True)
class DocCommand:
    """One ``m3ad-rl`` command of a doc: where it is and its arguments (without ``m3ad-rl``)."""

    file: str
    line: int
    text: str
    argv: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def _logical_lines(text: str) -> list[tuple[int, str, str]]:
    """(first line number, block language, line with backslash continuations joined) in fenced blocks."""
    out: list[tuple[int, str, str]] = []
    lines, fence, lang, i = text.splitlines(), None, "", 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m and fence is None:
            fence, lang = m.group(1)[0] * len(m.group(1)), m.group(2).lower()
        elif fence is not None and lines[i].strip().startswith(fence):
            fence = None
        elif fence is not None:
            start, line = i + 1, lines[i]
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            out.append((start, lang, line))
        i += 1
    return out


def commands_in(text: str, name: str) -> list[DocCommand]:
    """Every ``m3ad-rl`` command of ``text``'s shell blocks: at the start of a command (after ``&&``,
    ``;``, ``|``, environment assignments) or after ``--`` (``ray job submit … -- m3ad-rl …``);
    trailing ``# comments`` are dropped."""
    found = []
    for number, lang, line in _logical_lines(text):
        if lang not in SHELL_BLOCKS or "m3ad-rl" not in line:
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        segment: list[str] = []
        for token in [*lexer, ";"]:
            if token not in OPERATORS:
                segment.append(token)
                continue
            while segment and ENV_ASSIGNMENT.match(segment[0]):
                segment.pop(0)
            if "--" in segment and segment.index("--") + 1 < len(segment):
                segment = segment[segment.index("--") + 1 :]
            if segment and segment[0] == "m3ad-rl":
                found.append(DocCommand(name, number, shlex.join(segment), tuple(segment[1:])))
            segment = []
    return found


def _collect() -> list[DocCommand]:
    return [
        c for path in DOCS for c in commands_in(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())
    ]


COMMANDS = _collect()


def parse(cmd: DocCommand) -> argparse.Namespace:
    """The CLI's reading of ``cmd``; a refusal (argparse's exit) fails the test with argparse's message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return build_parser().parse_args(list(cmd.argv))
    except SystemExit as e:
        message = (err.getvalue().strip().splitlines() or [f"exit {e.code}"])[-1]
    pytest.fail(f"{cmd.where}: the CLI refuses `{cmd.text}`: {message}", pytrace=False)


def config_paths(args: argparse.Namespace) -> list[str]:
    """The config files a parsed command names (``--config``, ``--reward-config``, ``--variants``)."""
    named = [
        getattr(args, "config", None),
        getattr(args, "reward_config", None),
        *(getattr(args, "variants", None) or []),
    ]
    return [p for p in named if isinstance(p, str)]


def missing_configs(args: argparse.Namespace) -> list[str]:
    """Named configs that are neither in the checkout nor shipped: ``configs/<dir>/…`` must be both,
    a shipped name (``<dir>/…``) must be shipped; other paths are the user's own and not checked."""
    missing = []
    for path in config_paths(args):
        relative = path.removeprefix("configs/")
        if relative.split("/")[0] not in CONFIG_DIRS:
            continue
        if path.startswith("configs/") and not (ROOT / path).is_file():
            missing.append(f"{path} (not in the checkout)")
        try:
            config_file(relative)
        except UsageError:
            missing.append(f"{path} (not shipped in the package as {relative})")
    return missing


def test_the_docs_have_commands():
    """An empty collection would pass every check below: the docs show the CLI in many places."""
    assert len(COMMANDS) >= 40, [c.where for c in COMMANDS]
    assert {c.file for c in COMMANDS} >= {"README.md", "docs/data.md", "docs/training.md", "docs/kubernetes.md"}


@pytest.mark.parametrize("cmd", COMMANDS, ids=[c.where for c in COMMANDS])
def test_doc_command_parses(cmd: DocCommand):
    args = parse(cmd)
    assert callable(getattr(args, "func", None)), f"{cmd.where}: `{cmd.text}` names no command"
    missing = missing_configs(args)
    assert not missing, f"{cmd.where}: `{cmd.text}` names config files that do not exist: {', '.join(missing)}"


INLINE = re.compile(r"`(m3ad-rl [^`]*)`")
FLAG = re.compile(r"^\[?(--[a-z][a-z0-9-]*)")


def inline_mentions() -> list[tuple[str, str]]:
    """(file:line, span) of every inline ``m3ad-rl …`` in the prose: often partial (``…``, ``PATH``)."""
    found = []
    for path in DOCS:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            found += [(f"{path.relative_to(ROOT).as_posix()}:{number}", m) for m in INLINE.findall(line)]
    return found


def unknown_in_mention(span: str) -> list[str]:
    """The subcommand path of ``span`` as far as it goes, then every ``--flag`` must be one of that command's."""
    parser, words = build_parser(), span.split()[1:]
    if words and not words[0].startswith("-"):
        groups = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        if words[0] not in groups:
            return [words[0]]
    for word in words:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        parser = subs[0].choices[word]
    known = {"--debug"} | {o for a in parser._actions for o in a.option_strings}
    flags = [m.group(1) for w in words if (m := FLAG.match(w))]
    return [f for f in flags if f not in known]


def test_inline_mentions_name_real_commands_and_flags():
    """Prose mentions such as ``m3ad-rl serve rewards --batch-max-requests 64`` are not complete
    commands, but their command and flags must exist."""
    wrong = [
        f"{where}: `{span}`: {', '.join(bad)}" for where, span in inline_mentions() if (bad := unknown_in_mention(span))
    ]
    assert not wrong, "unknown commands or flags in the docs:\n" + "\n".join(wrong)
    assert unknown_in_mention("m3ad-rl train rcrl --bogus [--resume]") == ["--bogus"]
    assert unknown_in_mention("m3ad-rl trian rcrl") == ["trian"]


def test_importer_messages_name_real_flags():
    """The importers' errors and skip reasons advise flags (``--defect-type``, ``--category-scene``):
    each must be a flag of ``m3ad-rl data import``."""
    named = set()
    for path in sorted((ROOT / "m3ad_rl/data/importers").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                named |= {(path.name, f) for f in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", node.value)}
    assert {f for _, f in named} >= {"--root", "--defect-type", "--category-scene"}
    wrong = sorted((name, f) for name, f in named if unknown_in_mention(f"m3ad-rl data import {f}"))
    assert not wrong, f"importer messages name flags `m3ad-rl data import` lacks: {wrong}"


def test_the_collector_reads_shell_lines():
    """Continuations, comments, ``&&``, ``-- m3ad-rl`` and only shell blocks; a bogus flag is refused."""
    doc = (
        "text m3ad-rl data synth --bogus\n"
        "```bash\n"
        "pip install -e . && m3ad-rl demo --quick   # a comment --bogus\n"
        "m3ad-rl train rcrl --config configs/train/rcrl-cpu.yaml \\\n"
        "    --set steps=2\n"
        "ray job submit --address http://h:8265 -- m3ad-rl model tiny --out m\n"
        "echo m3ad-rl\n"
        "```\n"
        "```yaml\n"
        "m3ad-rl data synth --bogus\n"
        "```\n"
        "```\n"
        "m3ad-rl data import --dataset folder --root r --out o --bogus\n"
        "```\n"
    )
    got = commands_in(doc, "x.md")
    assert [(c.line, c.argv) for c in got] == [
        (3, ("demo", "--quick")),
        (4, ("train", "rcrl", "--config", "configs/train/rcrl-cpu.yaml", "--set", "steps=2")),
        (6, ("model", "tiny", "--out", "m")),
        (13, ("data", "import", "--dataset", "folder", "--root", "r", "--out", "o", "--bogus")),
    ]
    for good in got[:3]:
        parse(good)
    with pytest.raises(pytest.fail.Exception, match=r"x\.md:13: the CLI refuses .*unrecognized arguments: --bogus"):
        parse(got[3])
    bad = DocCommand("x.md", 1, "", ("train", "rcrl", "--config", "configs/train/nope.yaml"))
    assert missing_configs(parse(bad)) == [
        "configs/train/nope.yaml (not in the checkout)",
        "configs/train/nope.yaml (not shipped in the package as train/nope.yaml)",
    ]
