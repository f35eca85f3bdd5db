"""The connection life-cycle table and the calls that move along it."""

from __future__ import annotations

import itertools

import pytest
from engine_link import Link

from rdsx.engine import LEGAL_TRANSITIONS, Connection, ConnState
from rdsx.engine._state import transition
from rdsx.errors import LocalProtocolError, RemoteProtocolError

S = ConnState
#: Written out independently of the implementation: the edges the module docstring promises.
EXPECTED_EDGES = {
    (S.DOWN, S.CONNECTING),
    (S.CONNECTING, S.UP),
    (S.UP, S.RESETTING),
    (S.RESETTING, S.UP),
    (S.CONNECTING, S.DISCONNECTING),
    (S.UP, S.DISCONNECTING),
    (S.RESETTING, S.DISCONNECTING),
    (S.ERROR, S.DISCONNECTING),
    (S.DISCONNECTING, S.DOWN),
} | {(s, S.ERROR) for s in S if s is not S.ERROR}


def test_table_is_exactly_the_documented_edges() -> None:
    table = {(old, new) for old, news in LEGAL_TRANSITIONS.items() for new in news}
    assert table == EXPECTED_EDGES


@pytest.mark.parametrize(("old", "new"), list(itertools.product(S, S)))
def test_every_edge_is_checked(old: ConnState, new: ConnState) -> None:
    if (old, new) in EXPECTED_EDGES:
        assert transition(old, new) is new
    else:
        with pytest.raises(LocalProtocolError):
            transition(old, new)


def test_life_cycle_through_the_api() -> None:
    link = Link()
    a = link.a.conn
    assert a.state is S.DOWN
    a.transport_down(0.0)  # a no-op in DOWN
    a.start_connect(0.0)
    assert a.state is S.CONNECTING
    with pytest.raises(LocalProtocolError):
        a.start_connect(0.0)
    a.transport_down(0.0)
    assert a.state is S.DOWN
    link.connect()
    assert a.state is S.UP and link.b.conn.state is S.UP
    assert link.b.conn.incoming_connect(0.0)  # a stale transport replaced
    assert link.b.conn.state is S.RESETTING
    stats = link.b.conn.statistics()
    assert (stats.ib_listen_closed_stale, stats.conn_reset) == (1, 1)
    link.b.conn.transport_down(0.0)
    assert link.b.conn.state is S.DOWN
    assert link.b.conn.statistics().conn_reset == 1


def test_calls_in_the_wrong_state_raise_local_errors() -> None:
    conn = Connection("127.0.0.1", "127.0.0.2", generation=1)
    with pytest.raises(LocalProtocolError):
        conn.handshake()
    with pytest.raises(LocalProtocolError):
        conn.transport_up(b"", 0.0)
    with pytest.raises(LocalProtocolError):
        conn.receive_frame(b"\0" * 48, 0.0)
    with pytest.raises(LocalProtocolError):
        conn.receives_posted(1)
    conn.start_connect(0.0)
    with pytest.raises(LocalProtocolError):
        conn.transport_up(b"", 0.0)  # handshake() first


def test_bad_handshake_moves_to_error_and_only_transport_down_leaves_it() -> None:
    conn = Connection("127.0.0.1", "127.0.0.2", generation=1)
    conn.start_connect(0.0)
    conn.handshake()
    with pytest.raises(RemoteProtocolError):
        conn.transport_up(b"\xc1garbage", 0.0)
    assert conn.state is S.ERROR
    assert conn.statistics().recv_protocol_error == 1
    with pytest.raises(LocalProtocolError):
        conn.incoming_connect(0.0)
    conn.transport_down(0.0)
    assert conn.state is S.DOWN


def test_handshake_for_the_wrong_pair_is_rejected() -> None:
    other = Connection("127.0.0.3", "127.0.0.1", generation=5)
    other.start_connect(0.0)
    conn = Connection("127.0.0.1", "127.0.0.2", generation=1)
    conn.start_connect(0.0)
    conn.handshake()
    with pytest.raises(RemoteProtocolError):
        conn.transport_up(other.handshake(), 0.0)


def test_handshake_fits_cm_private_data() -> None:
    conn = Connection("255.255.255.254", "255.255.255.253", generation=0xFFFFFFFF)
    conn.start_connect(0.0)
    conn.receives_posted(0xFFFF)
    assert len(conn.handshake()) <= 196
    assert conn.handshake() == conn.handshake()


def test_state_changes_only_through_the_checked_transition() -> None:
    import ast
    import inspect

    import rdsx.engine._connection as module

    tree = ast.parse(inspect.getsource(module))
    writers = set()
    for func in ast.walk(tree):
        if isinstance(func, ast.FunctionDef):
            for node in ast.walk(func):
                if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for target in targets:
                        if isinstance(target, ast.Attribute) and target.attr == "_state":
                            writers.add(func.name)
    assert writers == {"__init__", "_transition"}
