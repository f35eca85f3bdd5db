"""The rdsx-stress ledger catches loss, duplicates, reorders and misaddressed messages."""

import attrs

from bench.header import HEADER_SIZE, Header, Op, decode, encode, pack_addr
from bench.verify import Anomaly, StreamState, TaskLedger, format_mismatch, reconcile

A, B = "127.0.0.1", "127.0.0.2"
PORT = 4000


def _ledger(addr: str, peer: str, index: int, **kw: object) -> TaskLedger:
    return TaskLedger(
        local_addr=addr,
        index=index,
        peer_addr=peer,
        base_port=PORT,
        tasks=2,
        req_bytes=256,
        ack_bytes=HEADER_SIZE,
        **kw,  # type: ignore[arg-type]
    )


def _src(addr: str, index: int) -> tuple[str, int]:
    return (addr, PORT + 1 + index)


def test_header_round_trip() -> None:
    hdr = Header(
        op=Op.ACK,
        seq=2**40,
        from_addr=pack_addr(A),
        from_port=4001,
        to_addr=pack_addr(B),
        to_port=4002,
        index=1,
        ack_of=7,
        cookie=2**63 + 5,
        size=HEADER_SIZE,
    )
    assert len(encode(hdr)) == HEADER_SIZE == 48
    assert decode(encode(hdr)) == hdr
    assert decode(b"XX" + encode(hdr)[2:]) is None and decode(b"RX") is None


def test_stream_state_classifies_every_case() -> None:
    s = StreamState()
    assert [s.receive(q) for q in (0, 1, 3, 2, 2, 5)] == [
        None,
        None,
        Anomaly.GAP,
        Anomaly.REORDERED,
        Anomaly.DUPLICATE,
        Anomaly.GAP,
    ]
    assert (s.unique, s.duplicated, s.reordered, s.missing) == (5, 1, 1, {4})
    assert s.received(3) and not s.received(4) and not s.received(6)


def _exchange(drop: int | None = None, dup: int | None = None, swap: int | None = None):  # type: ignore[no-untyped-def]
    """A (task 0) sends 6 requests to B (task 1); B acks each one it delivers."""
    a, b = _ledger(A, B, 0), _ledger(B, A, 1)
    msgs = [a.make_request(1, now=float(i)) for i in range(6)]
    if swap is not None:
        msgs[swap], msgs[swap + 1] = msgs[swap + 1], msgs[swap]
    if dup is not None:
        msgs.insert(dup + 1, msgs[dup])
    if drop is not None:
        del msgs[drop]
    verdicts = [b.receive(m, _src(A, 0), now=10.0) for m in msgs]
    for v in verdicts:
        if v.deliver:
            r = a.receive(b.make_ack(0, v.seq), _src(B, 1), now=20.0)
            assert r.op is Op.ACK and r.deliver
    return a, b, verdicts


def test_clean_exchange_is_ok() -> None:
    a, b, verdicts = _exchange()
    assert all(v.deliver and not v.anomalies and not v.report for v in verdicts)
    tally = reconcile([a, b])
    assert tally.ok and (tally.sent, tally.received, tally.requests_sent) == (12, 12, 6)
    assert a.outstanding_count() == 0


def test_loss_is_counted_and_reported() -> None:
    a, b, verdicts = _exchange(drop=2)
    gap = [v for v in verdicts if v.anomalies]
    assert [v.anomalies for v in gap] == [(Anomaly.GAP,)]
    assert "       seq               2 !=               3\n" in gap[0].report
    tally = reconcile([a, b])
    assert (tally.lost, tally.duplicated, tally.reordered, tally.errors) == (1, 0, 0, 0)
    assert tally.unanswered == 1 and not tally.ok


def test_duplicate_is_counted_and_not_delivered() -> None:
    a, b, verdicts = _exchange(dup=3)
    dups = [v for v in verdicts if Anomaly.DUPLICATE in v.anomalies]
    assert len(dups) == 1 and not dups[0].deliver
    assert "       seq               4 !=               3\n" in dups[0].report
    tally = reconcile([a, b])
    assert (tally.lost, tally.duplicated, tally.reordered, tally.errors) == (0, 1, 0, 0)


def test_reorder_is_counted_once() -> None:
    a, b, verdicts = _exchange(swap=1)
    kinds = [v.anomalies for v in verdicts]
    assert kinds.count((Anomaly.GAP,)) == 1 and kinds.count((Anomaly.REORDERED,)) == 1
    tally = reconcile([a, b])
    assert (tally.lost, tally.duplicated, tally.reordered, tally.errors) == (0, 0, 1, 0)


def test_ack_gives_rtt() -> None:
    a, b = _ledger(A, B, 0), _ledger(B, A, 0)
    req = a.make_request(0, now=1.0)
    v = b.receive(req, _src(A, 0), now=1.5)
    r = a.receive(b.make_ack(0, v.seq), _src(B, 0), now=1.25)
    assert r.rtt == 0.25 and a.outstanding_count() == 0


def test_unknown_ack_is_an_error() -> None:
    a, b = _ledger(A, B, 0), _ledger(B, A, 0)
    r = a.receive(b.make_ack(0, 42), _src(B, 0), now=1.0)
    assert Anomaly.UNKNOWN_ACK in r.anomalies and not r.deliver
    assert reconcile([a, b]).errors == 1


def test_misaddressed_message_is_an_error_with_table() -> None:
    a, b = _ledger(A, B, 0), _ledger(B, A, 1)
    req = a.make_request(0, now=0.0)  # addressed to B's task 0, delivered to task 1
    v = b.receive(req, _src(A, 0), now=0.0)
    assert v.anomalies == (Anomaly.MISADDRESSED,) and not v.deliver
    assert "   to_port            4002 !=            4001\n" in v.report
    assert b.streams == {}  # an untrusted message advances no stream
    assert reconcile([a, b]).errors == 1


def test_wrong_size_and_garbage_are_errors() -> None:
    a, b = _ledger(A, B, 0), _ledger(B, A, 0)
    v = b.receive(a.make_request(0, now=0.0)[:-1], _src(A, 0), now=0.0)
    assert v.anomalies == (Anomaly.BAD_SIZE,)
    v = b.receive(b"hello", _src(A, 0), now=0.0)
    assert v.anomalies == (Anomaly.MALFORMED,) and "had no rdsx-stress header" in v.report
    assert b.errors == 2


def test_payload_check_with_v() -> None:
    a, b = _ledger(A, B, 0), _ledger(B, A, 0, verify_payload=True)
    req = bytearray(a.make_request(0, now=0.0))
    req[HEADER_SIZE + 5] ^= 0xFF
    v = b.receive(bytes(req), _src(A, 0), now=0.0)
    assert v.anomalies == (Anomaly.BAD_PAYLOAD,)
    assert "corrupted payload at offset 5; 1 out of 208 bytes corrupted" in v.report


def test_rollback_forgets_an_unsent_request() -> None:
    a, b = _ledger(A, B, 0), _ledger(B, A, 0)
    a.make_request(0, now=0.0)
    a.rollback(Op.REQUEST, 0)
    assert a.outstanding_count() == 0 and reconcile([a, b]).ok


def test_mismatch_table_layout() -> None:
    want = Header(
        op=Op.REQUEST,
        seq=5,
        from_addr=pack_addr(A),
        from_port=4001,
        to_addr=pack_addr(B),
        to_port=4001,
        index=0,
        size=1024,
    )
    got = attrs.evolve(want, seq=7)
    assert format_mismatch(want, got) == (
        "An incoming message had a header which\n"
        "didn't contain the fields we expected:\n"
        "    member        expected eq             got\n"
        "       seq               5 !=               7\n"
        " from_addr       127.0.0.1  =       127.0.0.1\n"
        " from_port            4001  =            4001\n"
        "   to_addr       127.0.0.2  =       127.0.0.2\n"
        "   to_port            4001  =            4001\n"
        "     index               0  =               0\n"
        "        op               1  =               1\n"
        "    ack_of               0  =               0\n"
        "      size            1024  =            1024\n"
    )


def test_snapshot_round_trip_reconciles_like_the_live_ledger() -> None:
    import msgpack

    from bench.verify import LedgerSnapshot

    a, b, _ = _exchange(drop=2, swap=3)
    wire = msgpack.unpackb(msgpack.packb(LedgerSnapshot.of(b).to_wire()))
    remote_b = LedgerSnapshot.from_wire(wire)
    assert reconcile([a, remote_b]) == reconcile([a, b])
    assert reconcile([a, remote_b]).lost == 1 and reconcile([a, remote_b]).reordered == 1


def test_malformed_snapshot_is_rejected() -> None:
    import pytest

    from bench.verify import LedgerSnapshot

    with pytest.raises(ValueError, match="malformed ledger snapshot"):
        LedgerSnapshot.from_wire({"index": 0})
