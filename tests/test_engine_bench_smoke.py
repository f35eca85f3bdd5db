"""bench/engine_codec.py still runs (a tiny smoke run; no figure is checked)."""

from __future__ import annotations

import pytest

from bench import engine_codec


def test_engine_codec_bench_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert engine_codec.main(["--number", "20", "--messages", "20"]) == 0
    out = capsys.readouterr().out
    assert "struct" in out and "msgpack" in out
    assert out.count("us/msg") == 5
