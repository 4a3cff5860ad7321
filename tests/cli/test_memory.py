"""memtx read and generate --memory: read once, continue from the snapshot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from memtx import snapshot
from memtx.cli import app
from memtx.data import load_tokenizer
from memtx.reading import Context, next_logits, read, start_context
from memtx.train import load_trained
from tests.serve.conftest import rmt_run  # noqa: F401  (the shared tiny run)

runner = CliRunner()
TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind. " * 5


def test_read_then_generate_from_the_memory(rmt_run: Path, tmp_path: Path) -> None:  # noqa: F811
    source = tmp_path / "doc.txt"
    source.write_text(TEXT)
    out = tmp_path / "doc.mem"
    result = runner.invoke(
        app,
        ["read", "--run", str(rmt_run), "--input", str(source), "--out", str(out), "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tokens"] == len(TEXT)
    _, model = load_trained(rmt_run)
    saved = snapshot.load(out, model=model)
    ids = torch.from_numpy(load_tokenizer(rmt_run).encode(TEXT).astype("int64"))[None]
    expected = next_logits(model, read(model, ids, start_context(model)))
    got = next_logits(model, Context(saved.memory, saved.pending, saved.tokens_read))
    assert torch.equal(got, expected)

    after = tmp_path / "after.mem"
    args = ["generate", "--run", str(rmt_run), "--memory", str(out), "--prompt", "",
            "--max-new-tokens", "7", "--temperature", "0", "--save-memory", str(after)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert snapshot.load(after, model=model).tokens_read == len(TEXT) + 7


def test_read_from_stdin_and_bad_input(rmt_run: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "s.mem"
    args = ["read", "--run", str(rmt_run), "--input", "-", "--out", str(out), "--no-progress"]
    result = runner.invoke(app, args, input=TEXT)
    assert result.exit_code == 0 and snapshot.load(
        out, model=load_trained(rmt_run)[1]
    ).tokens_read == len(TEXT)
    result = runner.invoke(app, [*args[:4], str(tmp_path / "missing.txt"), *args[5:]])
    assert result.exit_code == 2 and "is not a file" in result.stderr
    result = runner.invoke(app, args, input="")
    assert result.exit_code == 2 and "empty" in result.stderr
    (tmp_path / "junk.mem").write_bytes(b"junk" * 10)
    bad = [
        "generate",
        "--run",
        str(rmt_run),
        "--memory",
        str(tmp_path / "junk.mem"),
        "--prompt",
        "x",
    ]
    result = runner.invoke(app, bad)
    assert result.exit_code == 2 and "not a memtx snapshot" in result.stderr


@pytest.mark.parametrize("verb", ["read", "serve"])
def test_verbs_have_help(verb: str) -> None:
    result = runner.invoke(app, [verb, "--help"])
    assert result.exit_code == 0 and "--run" in result.stdout
