"""bench.tcp_verbs stays runnable (a small run of both sides; no timing asserted)."""

from __future__ import annotations

import pytest
import trio

from bench.tcp_verbs import main, plain_tcp, qp_stages, tcp_verbs


async def test_both_sides_move_every_message() -> None:
    with trio.fail_after(10):
        verbs = await tcp_verbs(256, 300, 16)
        plain = await plain_tcp(256, 300, 16)
    assert verbs["cpu_us_per_msg"] > 0 and plain["cpu_us_per_msg"] > 0
    assert verbs["frames_per_send_all"] >= 1


def test_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--size", "64", "--count", "100", "--window", "8"]) == 0
    out = capsys.readouterr().out
    assert "tcp verbs" in out and "plain trio TCP" in out and "CPU us/msg" in out


async def test_the_stages_deliver_and_complete_every_message() -> None:
    with trio.fail_after(10):
        stages = await qp_stages(512, 5, 8)  # raises if a round loses a completion
    assert set(stages) == {"post_send", "join+decode", "deliver", "ack+complete", "cpu_us_per_msg"}


def test_stages_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--stages", "--size", "64", "--count", "64", "--batch", "8"]) == 0
    assert "qp stages" in capsys.readouterr().out
