"""memtx bench peers on a tiny size: every row ok, or skipped/failed with a reason."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from memtx.bench import peers
from memtx.bench.peers import PAIRS, ROWS, PeerSizes, main, run_peers_benchmark

TINY = PeerSizes(
    d_model=32,
    n_heads=2,
    d_ff=128,
    segment_len=8,
    batch_size=2,
    rollout=2,
    encoder_layers=1,
    decoder_layers=1,
    memory_slots=4,
    rmt_layers=1,
    memory_tokens=4,
)
PEER_MODULES = {
    "memformer": ("memformer", "einops"),
    "recurrent-memory-transformer-pytorch": (
        "recurrent_memory_transformer_pytorch",
        "einops",
        "hyper_connections",
    ),
}


def _importable(package: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in PEER_MODULES[package])


@pytest.mark.slow
def test_peers_table_tiny(tmp_path: Path) -> None:
    rows = run_peers_benchmark(
        out_dir=tmp_path, steps=1, warmup=0, threads=1, progress=False, sizes=TINY, jobs=2
    )
    assert [r["row"] for r in rows] == list(ROWS)
    for row in rows:
        status = row["status"]
        if status == "ok":
            assert row["tokens_per_s"] > 0 and row["flops_per_step"] > 0, row
            assert row["gflops_per_s"] > 0 and row["peak_rss_mb"] > 0, row
        else:
            assert status.startswith(("skipped (", "failed (")) and len(status) > 12, row
        if row["package"] is None or _importable(row["package"]):
            assert status == "ok", row
        elif status.startswith("skipped"):
            assert "pip install memformer==0.3.1" in status
    by_row = {r["row"]: r for r in rows}
    # The memtx rows score every token; the peer's own MRBP only the last segment's.
    assert by_row["memtx-memformer-full"]["scored_per_step"] == 2 * 2 * 8
    if by_row["peer-memformer-mrbp"]["status"] == "ok":
        assert by_row["peer-memformer-mrbp"]["scored_per_step"] == 2 * 8
    text = (tmp_path / "peers.md").read_text()
    assert "python -m memtx.bench.peers" in text and "LAST segment only" in text
    ok = {r["row"] for r in rows if r["status"] == "ok"}
    compared = sum(mine in ok and peer in ok for mine, peer, _ in PAIRS)
    assert text.count("\n| `") == len(ROWS) + compared  # the table, then the ratios
    saved = json.loads((tmp_path / "peers.json").read_text())
    assert saved["sizes"]["d_model"] == 32 and len(saved["rows"]) == len(ROWS)


def test_failed_row_does_not_crash_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker, in this process: 30 is not divisible by the 4 heads.
    assert main(["--worker", "--row=memtx-rmt-full", '--sizes={"d_model": 30}']) == 1
    failed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert failed["status"].startswith("failed (") and "d_model" in failed["status"]
    # The table around it, with that answer from the worker process.
    monkeypatch.setattr(peers, "run_json_worker", lambda *args, **kwargs: failed)
    rows = run_peers_benchmark(
        out_dir=tmp_path, progress=False, rows=["memtx-rmt-full", "memtx-memformer-full"]
    )
    assert [r["status"] for r in rows] == [failed["status"]] * 2
    assert (tmp_path / "peers.md").read_text().count("failed (") == 2


def test_missing_peer_is_skipped_with_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peers, "missing_modules", lambda package: ["memformer"])
    rows = run_peers_benchmark(out_dir=tmp_path, progress=False, rows=["peer-memformer-full"])
    assert rows[0]["status"].startswith("skipped (pip install memformer==0.3.1")
    assert "skipped (pip install" in (tmp_path / "peers.md").read_text()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown rows"):
        run_peers_benchmark(out_dir=Path("unused"), rows=["nope"])
    with pytest.raises(ValueError, match="steps"):
        run_peers_benchmark(out_dir=Path("unused"), steps=0)
    with pytest.raises(SystemExit):
        main(["--sizes", '{"width": 3}'])


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--rows" in capsys.readouterr().out


def test_profile_splits_a_step_into_matmul_attention_and_the_rest(tmp_path: Path) -> None:
    path = peers.profile_row(row="memtx-rmt-full", sizes=TINY, out_dir=tmp_path, warmup=0)
    text = path.read_text()
    shares = {
        line.split("|")[1].strip(): float(line.split("|")[2].strip().rstrip("%"))
        for line in text.splitlines()
        if line.startswith("| matmul")
        or line.startswith("| attention")
        or line.startswith("| other")
    }
    assert len(shares) == 3 and sum(shares.values()) == pytest.approx(100, abs=0.3)
    assert shares["attention (SDPA fwd + bwd)"] > 0  # RMT runs on SDPA
    assert "`aten::mm`" in text
