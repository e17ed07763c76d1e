"""The ``ds-twophase`` command describes itself, and the docs name only commands that exist."""

from __future__ import annotations

import re

from _launch import REPO

from ds_twophase.cli import COMMANDS, SUMMARIES, main

DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def test_help_lists_every_command_with_one_line(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert set(SUMMARIES) == set(COMMANDS)
    for name, summary in SUMMARIES.items():
        assert re.search(rf"^  {re.escape(name)} +{re.escape(summary)}$", out, re.M), name


def test_no_arguments_print_the_help_and_exit_2(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in COMMANDS)
    assert "commands:" in err


def code_in(text: str) -> list[str]:
    """The fenced blocks and inline code spans of a Markdown text (where commands are)."""
    blocks = re.findall(r"```.*?```", text, re.S)
    rest = re.sub(r"```.*?```", "", text, flags=re.S)
    return blocks + re.findall(r"`([^`\n]+)`", rest)


def test_every_command_the_docs_name_exists():
    named = {
        (path.relative_to(REPO).as_posix(), word)
        for path in DOC_FILES
        for code in code_in(path.read_text())
        for word in re.findall(r"ds-twophase ([a-z][a-z-]*[a-z])", code)
    }
    assert {word for _, word in named} >= {"train", "check-config"}  # the scan finds them
    assert [(doc, word) for doc, word in named if word not in COMMANDS] == []
