"""rdsx-stress option parsing: rds-stress's letters, K/M/G sizes, clear errors with exit 2."""

import pytest

from bench.header import HEADER_SIZE
from bench.options import Options, parse_args, parse_size


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("4096", 4096), ("4K", 4096), ("4k", 4096), ("1M", 1 << 20), ("2G", 2 << 30)],
)
def test_sizes_accept_k_m_g_suffixes(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "K", "4X", "-1", "1.5K", "4KB"])
def test_bad_sizes_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def test_defaults_follow_rds_stress() -> None:
    opts = parse_args([])
    assert (opts.port, opts.req_bytes, opts.ack_bytes, opts.depth, opts.tasks) == (
        4000,
        1024,
        HEADER_SIZE,
        1,
        1,
    )
    assert opts.time == 0 and opts.transport == "sim" and opts.rate is None


def test_demo_command_line() -> None:
    opts = parse_args(["--transport", "sim", "-q", "4K", "-a", "4K", "-t", "7", "-T", "5"])
    assert (opts.req_bytes, opts.ack_bytes, opts.tasks, opts.time) == (4096, 4096, 7, 5.0)
    # rds-stress sizes both socket buffers to t*d*(q+a)*2.
    assert opts.sockbuf == 7 * 1 * (4096 + 4096) * 2


def test_removal_options() -> None:
    opts = parse_args(["-T", "5", "--remove-at", "2", "--grace", "surprise"])
    assert opts.remove_at == 2.0 and opts.grace is None
    assert parse_args(["--grace", "0.5"]).grace == 0.5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-q", "4X"], "invalid size '4X'"),
        (["-q", "8"], f"request size must be at least {HEADER_SIZE} bytes"),
        (["-a", "2M"], "ack size must be at most"),
        (["-t", "0"], "must be at least 1"),
        (["-d", "x"], "invalid integer 'x'"),
        (["-T", "-3"], "must not be negative"),
        (["--grace", "soon"], "invalid number of seconds 'soon'"),
        (["--virtual-time", "-T", "3"], "--virtual-time needs --rate"),
        (["-T", "3", "--remove-at", "4"], "--remove-at must fall inside"),
        (["-r", "127.0.0.1", "-s", "127.0.0.1"], "-r and -s must differ"),
    ],
)
def test_errors_print_a_clear_message_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("usage: rdsx-stress")


def test_options_are_frozen() -> None:
    opts = Options()
    with pytest.raises(AttributeError):
        opts.tasks = 3  # type: ignore[misc]


def test_chaos_option() -> None:
    assert parse_args(["--chaos", "drop=0.01,delay=0.5"]).chaos == (0.01, 0.0, 0.5)
    assert parse_args([]).chaos is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--chaos", "drop=2"], "invalid chaos 'drop=2'"),
        (["--chaos", "loss=0.1"], "invalid chaos 'loss=0.1'"),
        (["--transport", "tcp", "--in-process", "--chaos", "drop=0.1"], "needs the sim"),
    ],
)
def test_chaos_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_help_names_the_migration_flags_its_parser_leaves_out(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bench.compare import parse as parse_migration
    from bench.options import build_parser

    epilog = build_parser().epilog or ""
    with pytest.raises(SystemExit):
        parse_migration(["--help"])
    migration_help = capsys.readouterr().out.split("usage: rdsx-stress [-h]")[0]
    flags = {word.strip(",;") for word in epilog.split() if word.startswith("--")} - {"--help"}
    assert flags and all(flag in migration_help for flag in flags)
    assert {"--compare", "--migrate-at", "--profile", "--clock"} <= flags
