"""The CLI: thin, one line on stderr and exit code 2 for bad input, no partial files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from memtx.cli import app
from memtx.config import load_run_config
from memtx.errors import MemtxError
from tests.helpers import TINY

runner = CliRunner()


def _sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.mark.parametrize(
    "verb", ["train", "eval", "demo", "bench", "generate", "inspect", "pretrain", "repro"]
)
def test_help(verb: str) -> None:
    result = runner.invoke(app, [verb, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.foo=1"], "unknown key train.foo"),
        (["--set", "train.lr=fast"], "train.lr must be float, got 'fast'"),
        (["--set", "model.segment_len=0"], "model.segment_len must be >= 1, got 0"),
        (["--set", "data.corpus=nowhere-corpus"], "corpus 'nowhere-corpus' is not a known name"),
        (["--set", "data.corpus=/no/such/file.txt"], "/no/such/file.txt"),
        (["--config", "configs/missing.toml"], "does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--out", str(out), *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not out.exists()


def test_toml_syntax_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nname = 1")
    result = runner.invoke(app, ["train", "--config", str(bad), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "is not valid TOML" in result.stderr
    assert "Traceback" not in result.stderr


def test_eval_of_a_folder_without_a_run(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "--run", str(tmp_path)])
    assert result.exit_code == 2 and "holds no run" in result.stderr


def test_train_then_eval_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "--out", str(out), "--no-progress", *_sets([*TINY, "train.steps=4"])]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4
    result = runner.invoke(
        app, ["eval", "--run", str(out), "--json", "--max-tokens", "1000", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["tokens"] > 0 and report["bpc"] > 0
    # Evaluating Transformer-XL without its cache works from the same weights.
    result = runner.invoke(
        app,
        [
            "eval",
            "--run",
            str(out),
            "--json",
            "--max-tokens",
            "1000",
            "--no-progress",
            "--set",
            "model.mem_len=0",
        ],
    )
    assert result.exit_code == 0, result.output
    # A weight-changing override is refused clearly.
    result = runner.invoke(app, ["eval", "--run", str(out), "--set", "model.d_model=64"])
    assert result.exit_code == 2 and "does not fit" in result.stderr


def test_console_script_exit_code() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "memtx", "train", "--out", "/tmp/never", "--set", "x=1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:")


def test_generate_streams_text_and_rejects_bad_input(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "--out", str(out), "--no-progress", *_sets([*TINY, "train.steps=2"])]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app,
        [
            "generate",
            "--run",
            str(out),
            "--prompt",
            "To be, or not",
            "--max-new-tokens",
            "40",
            "--seed",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(result.stdout.strip()) > 0
    result = runner.invoke(
        app, ["generate", "--run", str(out), "--prompt", "x", "--max-new-tokens", "-1"]
    )
    assert result.exit_code == 2 and "max-new-tokens" in result.stderr
    result = runner.invoke(app, ["generate", "--run", str(out), "--prompt", ""])
    assert result.exit_code == 2 and "prompt is empty" in result.stderr
    result = runner.invoke(app, ["generate", "--run", str(tmp_path), "--prompt", "x"])
    assert result.exit_code == 2 and "holds no run" in result.stderr
    empty_run = tmp_path / "no-checkpoint"
    empty_run.mkdir()
    (empty_run / "config.json").write_text((out / "config.json").read_text())
    result = runner.invoke(app, ["generate", "--run", str(empty_run), "--prompt", "x"])
    assert result.exit_code == 2 and "no intact checkpoint" in result.stderr


def test_bench_peak_reports_a_rate() -> None:
    result = runner.invoke(app, ["bench", "peak", "--sizes", "64"])
    assert result.exit_code == 0, result.output
    assert "GFLOP/s" in result.stdout
    result = runner.invoke(app, ["bench", "peak", "--dtype", "fp8"])
    assert result.exit_code == 2 and "--dtype" in result.stderr


def test_repro_rmt_passes_its_overrides_on(tmp_path: Path) -> None:
    # A bad --set value is named before anything trains.
    args = ["repro", "rmt", "--set", "task.last_stage_lr=-1", "--no-facts", "--tasks", "copy"]
    where = ["--runs", str(tmp_path / "r"), "--out", str(tmp_path / "o")]
    result = runner.invoke(app, [*args, "--variants", "rmt", *where])
    assert result.exit_code == 2
    assert "task.last_stage_lr must be >= 0" in result.output
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- bad input

MEMFORMER = [
    "model.name=memformer",
    "model.d_model=32",
    "model.n_layers=3",
    "model.n_heads=2",
    "model.segment_len=16",
    "model.memory_slots=4",
    "train.batch_size=4",
    "train.steps=2",
    "train.warmup_steps=1",
    "train.eval_tokens=500",
]


def _one_error(result: Result, message: str) -> None:
    """Bad input: exit code 2 and exactly one line on stderr, ``error: ...message...``."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert message in lines[0], result.stderr


def _trained(tmp_path_factory: pytest.TempPathFactory, name: str, settings: list[str]) -> Path:
    out = tmp_path_factory.mktemp(name) / "run"
    result = runner.invoke(app, ["train", "--out", str(out), "--no-progress", *_sets(settings)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _trained(tmp_path_factory, "text", [*TINY, "train.steps=2"])


@pytest.fixture(scope="module")
def task_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    task = ["task.name=copy", "task.segments=2", "task.eval_samples=4"]
    return _trained(tmp_path_factory, "task", [*TINY, "train.steps=2", *task])


@pytest.fixture(scope="module")
def memformer_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _trained(tmp_path_factory, "memformer", MEMFORMER)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("train.lr=inf", "train.lr must be a finite number, got inf"),
        ("train.lr=1e400", "train.lr must be a finite number, got inf"),
        ("train.weight_decay=nan", "train.weight_decay must be a finite number, got nan"),
        ("train.grad_clip=nan", "train.grad_clip must be a finite number, got nan"),
        ("train.grad_clip=inf", "train.grad_clip must be a finite number, got inf"),
        ("train.betas=[0.9, nan]", "train.betas must be a finite number, got (0.9, nan)"),
        ("model.dropout=-inf", "model.dropout must be a finite number, got -inf"),
        ("task.advance_at=nan", "task.advance_at must be a finite number, got nan"),
        ("task.stop_at=nan", "task.stop_at must be a number or inf, got nan"),
        ('data.corpus=""', "data.corpus must not be empty"),
        ('data.cache_dir=" "', "data.cache_dir must not be empty"),
    ],
)
def test_non_finite_and_empty_config_values_are_refused(
    tmp_path: Path, item: str, message: str
) -> None:
    out = tmp_path / "run"
    _one_error(runner.invoke(app, ["train", "--out", str(out), "--set", item]), message)
    assert not out.exists()


def test_stop_at_may_be_infinite() -> None:
    # "stop at accuracy >= inf" is "never", like any stop_at > 1.
    assert load_run_config(None, overrides=["task.stop_at=inf"]).task.stop_at == float("inf")  # type: ignore[union-attr]


def test_train_device_must_not_be_empty(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _one_error(
        runner.invoke(app, ["train", "--out", str(out), "--device", ""]),
        "train.device must not be empty",
    )
    assert not out.exists()


def test_inspect_rejects_bad_input(memformer_run: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    cases = [
        (["--out", str(a_file)], "is a file, not a folder"),
        (["--out", str(a_file / "sub")], "is not a folder"),
        (["--max-segments", "0"], "--max-segments must be >= 1, got 0"),
        (["--max-segments", "-3"], "--max-segments must be >= 1, got -3"),
        (["--split", "foo"], "--split must be valid or test, got 'foo'"),
        (["--data", ""], "--data is empty"),
        (["--document", "-1"], "--document must be in [0, "),
    ]
    if Path("/proc/self").is_dir():  # a folder nobody can create anything in, root included
        cases.append((["--out", "/proc/memtx-no-such/report"], "cannot write the report"))
    for args, message in cases:
        _one_error(runner.invoke(app, ["inspect", "--run", str(memformer_run), *args]), message)
    assert not (memformer_run / "inspect").exists()
    assert a_file.read_text() == "not a folder"
    # Good input still writes the report.
    out = tmp_path / "report"
    result = runner.invoke(
        app, ["inspect", "--run", str(memformer_run), "--max-segments", "2", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert (out / "retention.png").is_file()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_inspect_rejects_an_unwritable_folder(memformer_run: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        result = runner.invoke(
            app, ["inspect", "--run", str(memformer_run), "--out", str(locked / "report")]
        )
        _one_error(result, "is not writable")
    finally:
        locked.chmod(0o700)
    assert not (locked / "report").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--temperature", "nan"], "temperature must be a finite number >= 0, got nan"),
        (["--temperature", "inf"], "temperature must be a finite number >= 0, got inf"),
        (["--temperature", "-1"], "temperature must be a finite number >= 0, got -1"),
        (["--top-p", "0"], "top_p must be in (0, 1], got 0"),
        (["--top-p", "1.5"], "top_p must be in (0, 1], got 1.5"),
        (["--top-p", "nan"], "top_p must be in (0, 1], got nan"),
        (["--top-k", "-1"], "top_k must be >= 0, got -1"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
        (["--seed", str(2**64)], "--seed must be in [-2**63, 2**64)"),
    ],
)
def test_generate_rejects_bad_sampling(text_run: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["generate", "--run", str(text_run), "--prompt", "To be", *args])
    _one_error(result, message)
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-tokens", "-5"], "max_tokens must be >= 0 (0: all), got -5"),
        (["--rows", "0"], "rows must be a positive integer, got 0"),
        (["--rows", "-1"], "rows must be a positive integer, got -1"),
        (["--split", "train"], "--split must be valid or test, got 'train'"),
        (["--data", ""], "data.corpus must not be empty"),
        (["--diagnostic", "memory_reset"], "--diagnostic is for memformer runs;"),
    ],
)
def test_eval_rejects_bad_input(text_run: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["eval", "--run", str(text_run), "--no-progress", *args])
    _one_error(result, message)
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--samples", "0"], "samples must be >= 1, got 0"),
        (["--samples", "-3"], "samples must be >= 1, got -3"),
        (["--segments", "0"], "--segments must be >= 1, got 0"),
        (["--diagnostic", "no_reader"], "--diagnostic: for text runs"),
    ],
)
def test_task_eval_rejects_bad_input(task_run: Path, args: list[str], message: str) -> None:
    _one_error(runner.invoke(app, ["eval", "--run", str(task_run), *args]), message)


def test_task_eval_scores_samples(task_run: Path) -> None:
    result = runner.invoke(app, ["eval", "--run", str(task_run), "--samples", "3", "--json"])
    assert result.exit_code == 0, result.output
    assert 0.0 <= json.loads(result.stdout)["token_accuracy"] <= 1.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "mrbp", "--steps", "0"], "--steps must be >= 1, got 0"),
        (["bench", "mrbp", "--rollouts", ""], "--rollouts expects integers >= 1"),
        (["bench", "scaling", "--models", ""], "--models expects at least one of memformer"),
        (["bench", "scaling", "--models", "foo"], "--models: unknown 'foo'"),
        (["bench", "scaling", "--mem-len", "-1"], "--mem-len must be >= 0, got -1"),
        (["bench", "scaling", "--device", "gpu"], "--device must be cpu, cuda or cuda:N"),
        (["bench", "scaling", "--device", "cuda:99"], "but this machine has"),
        (["bench", "peers", "--steps", "0"], "--steps must be >= 1, got 0"),
        (["bench", "peers", "--threads", "0"], "--threads must be >= 1, got 0"),
        (["bench", "peak", "--device", "gpu"], "--device must be cpu, cuda or cuda:N"),
        (["bench", "peak", "--device", "cuda:99"], "but this machine has"),
        (["repro", "rmt", "--tasks", ""], "--tasks expects at least one of copy, reverse"),
        (["repro", "rmt", "--variants", " , "], "--variants expects at least one of rmt"),
        (["repro", "rmt", "--variants", "rnn"], "--variants: unknown 'rnn'"),
        (["repro", "memformer", "--caches", ""], "--caches expects at least one cache length"),
        (["repro", "memformer", "--steps", "0"], "--steps must be >= 1, got 0"),
        (["repro", "memformer", "--threads", "0"], "--threads must be >= 1, got 0"),
        (["repro", "tmr", "--seeds", ""], "--seeds expects integers >= 0"),
    ],
)
def test_bench_and_repro_reject_bad_options(tmp_path: Path, args: list[str], message: str) -> None:
    out, runs = tmp_path / "out", tmp_path / "runs"
    where = [] if args[1] == "peak" else ["--out", str(out)]
    where += ["--runs", str(runs)] if args[0] == "repro" else []
    _one_error(runner.invoke(app, [*args, *where]), message)
    assert not out.exists() and not runs.exists()


@pytest.mark.parametrize(
    "verb",
    [
        ["bench", "mrbp"],
        ["bench", "scaling"],
        ["bench", "peers"],
        ["repro", "rmt"],
        ["repro", "memformer"],
        ["repro", "tmr"],
    ],
)
def test_bench_and_repro_refuse_a_file_as_out(tmp_path: Path, verb: list[str]) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("results")
    runs = ["--runs", str(tmp_path / "runs")] if verb[0] == "repro" else []
    result = runner.invoke(app, [*verb, "--out", str(a_file), *runs])
    _one_error(result, f"--out {a_file} is a file, not a folder")
    assert a_file.read_text() == "results" and not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- @guarded


def test_ctrl_c_exits_130(text_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import memtx.generate

    def interrupted(*args: object, **kwargs: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(memtx.generate, "generate_text", interrupted)
    result = runner.invoke(app, ["generate", "--run", str(text_run), "--prompt", "x"])
    assert result.exit_code == 130 and result.stderr.strip() == "interrupted"


def test_debug_shows_the_error_itself(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--debug", "eval", "--run", str(tmp_path)])
    assert isinstance(result.exception, MemtxError) and "holds no run" in str(result.exception)
