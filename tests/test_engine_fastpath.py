"""The engine's fast paths change nothing: a differential test against the general path.

Every engine is a *twin*: two :class:`Connection`s fed the same calls, one through the
public ``receive_frame``/``frames_to_send`` (with their fast paths), the other through
``_receive_general``/``_frames_to_send_general`` (the general code alone). After every call
both must have returned (or raised) the same thing, emitted the same frames and events, and
hold the same state, queues, counters and timer. Hypothesis drives random programs on two
twins joined by the fake link, including header fields mangled near their valid values, so
frames that just miss a fast-path condition take the general path on both sides.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from engine_link import Link, perturb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rdsx.engine import HEADER_SIZE, CongestionMap, Connection, ConnState, EngineConfig
from rdsx.errors import MessageTooLarge, RemoteProtocolError

_HEADER = struct.Struct(">QQIHHBBHHH")
#: the public method and the reference the twin compares it with
_REFERENCE = {"receive_frame": "_receive_general", "frames_to_send": "_frames_to_send_general"}


def _normal(value: Any) -> Any:
    """Comparable form of a return value (fragment payloads may be memoryviews)."""
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_normal(v) for v in value)
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    return value


class Twin:
    """Stands in for a Connection in :class:`Link`; runs every call on both engines."""

    #: for each method, the one the reference engine runs instead
    reference: ClassVar[dict[str, str]] = _REFERENCE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.fast = Connection(*args, **kwargs)
        self.ref = Connection(*args, **kwargs)
        self.calls = 0

    @property
    def state(self) -> ConnState:
        assert self.fast.state is self.ref.state
        return self.fast.state

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            outcomes = []
            for conn, method in ((self.fast, name), (self.ref, self.reference.get(name, name))):
                fresh = [bytearray(a) if isinstance(a, memoryview) else a for a in args]
                try:
                    outcomes.append(("ok", _normal(getattr(conn, method)(*fresh, **kwargs))))
                except Exception as exc:
                    outcomes.append(("raised", type(exc), str(exc), exc))
            fast, ref = outcomes
            assert fast[:3] == ref[:3], (name, args)
            self.check()
            if fast[0] == "raised":
                raise fast[3]
            return fast[1]

        return call

    def check(self) -> None:
        fast, ref = self.fast, self.ref
        assert fast.info() == ref.info()
        assert fast.statistics() == ref.statistics()
        assert fast.get_timer() == ref.get_timer()
        assert fast.has_pending() == ref.has_pending()
        assert fast._events == ref._events
        for name in (
            "_highest_sent",
            "_last_ack_sent",
            "_ack_needed",
            "_grant_pending",
            "_peer_credits",
            "_throttled",
            "_unacked_packets",
            "_unacked_bytes",
            "_rx_active",
            "_rx_key",
            "_rx_next",
            "_rx_buf",
            "_rx_discard",
            "_peer_cong",
        ):
            assert getattr(fast, name) == getattr(ref, name), name


def twin_link(config: EngineConfig, ring: int, twin: type[Twin] = Twin) -> Link:
    link = Link(config, ring=ring)
    for side, (local, remote, gen) in (
        (link.a, ("127.0.0.1", "127.0.0.2", 11)),
        (link.b, ("127.0.0.2", "127.0.0.1", 22)),
    ):
        side.conn = twin(local, remote, generation=gen, config=config)  # type: ignore[assignment]
    link.strict_credits = False
    return link


# per frame: 0 deliver, 1 drop, 2 duplicate, 3 swap with the next, 4 mangle a header field
plan_strategy = st.lists(st.sampled_from([0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 4]), max_size=12)
op_strategy = st.one_of(
    st.tuples(
        st.just("send"),
        st.booleans(),  # from a
        st.sampled_from([0, 1, 2]),  # sport (0: a pong-like source)
        st.sampled_from([0, 1, 2]),  # dport (0: a ping)
        st.sampled_from([0, 1, 255, 256, 257, 600]),
        st.booleans(),  # ack_required
        st.sampled_from([b"", b"x", b"ext-bytes"]),
        st.booleans(),  # rdma
    ),
    st.tuples(
        st.just("exchange"),
        st.booleans(),
        st.one_of(st.none(), st.integers(0, 4)),  # budget
        plan_strategy,
        st.lists(st.tuples(st.integers(0, 9), st.integers(-2, 2), st.integers(0, 7)), max_size=4),
    ),
    st.tuples(st.just("burst"), st.booleans(), st.integers(2, 9)),
    st.tuples(st.just("reset")),
    st.tuples(st.just("replace")),
    st.tuples(st.just("timer")),
    st.tuples(st.just("cancel"), st.booleans(), st.sampled_from([1, 2])),
)


def mangle_field(frame: bytes, field: int, delta: int, bit: int) -> bytes:
    """Move one header field near its value (or flip a flag bit), or truncate the frame."""
    if len(frame) < _HEADER.size or field == 9:
        return frame[: max(0, len(frame) - 1 - abs(delta))]
    fields = list(_HEADER.unpack_from(frame))
    if field == 5:
        fields[5] ^= 1 << bit
    else:
        limit = (1 << 64, 1 << 64, 1 << 32, 1 << 16, 1 << 16, 256, 256, 1 << 16, 1 << 16)[field]
        fields[field] = (fields[field] + delta) % limit
    return _HEADER.pack(*fields) + frame[_HEADER.size :]


def _field_mangler(
    mangles: list[tuple[int, int, int]],
) -> Callable[[int, bytes], bytes] | None:
    """Action 4's rewrite: frame ``i`` gets ``mangles[i % len(mangles)]``; None without any."""
    if not mangles:
        return None
    return lambda i, frame: mangle_field(frame, *mangles[i % len(mangles)])


def run_program(
    program: list[tuple[Any, ...]], config: EngineConfig, ring: int, twin: type[Twin] = Twin
) -> int:
    link = twin_link(config, ring, twin)
    link.connect()
    counter = 0
    for op in program:
        kind = op[0]
        if kind == "send":
            _, from_a, sport, dport, size, ack_required, ext, rdma = op
            counter += 1
            payload = (b"%d:" % counter).ljust(size, b".")[:size]
            side = link.a if from_a else link.b
            with contextlib.suppress(MessageTooLarge):
                side.conn.send(
                    sport,
                    dport,
                    payload,
                    token=payload,
                    ack_required=ack_required,
                    rdma=rdma,
                    ext=ext,
                )
        elif kind == "burst":
            _, from_a, many = op
            for _ in range(many):
                counter += 1
                side = link.a if from_a else link.b
                side.conn.send(1, 2, b"%d" % counter, token=counter)
        elif kind == "exchange":
            _, from_a, budget, plan, mangles = op
            if link.a.conn.state is not ConnState.UP or link.b.conn.state is not ConnState.UP:
                link.reset()
                link.connect()
            side = link.a if from_a else link.b
            pairs = side.conn.frames_to_send(link.now, budget)
            frames = [h + bytes(p) for h, p in pairs]
            link.deliver(link.peer(side), perturb(frames, plan, _field_mangler(mangles)))
        elif kind == "reset":
            link.reset()
            link.connect()
        elif kind == "replace":
            link.replace()
        elif kind == "timer":
            if link.a.conn.state is ConnState.UP and link.b.conn.state is ConnState.UP:
                link.now += 0.002
                for s in (link.a, link.b):
                    s.conn.handle_timer(link.now)
        else:
            _, from_a, sport = op
            (link.a if from_a else link.b).conn.cancel(sport, None)
    # heal and finish: both twins must agree all the way to quiet
    link.reset()
    link.connect()
    link.run()
    return link.a.protocol_errors + link.b.protocol_errors


SETTINGS = settings(
    max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@SETTINGS
@given(st.lists(op_strategy, max_size=50))
def test_fast_paths_match_the_general_path_with_flow_control(program: list[Any]) -> None:
    run_program(program, EngineConfig(frag_size=256, ack_delay=0.002), ring=6)


@SETTINGS
@given(st.lists(op_strategy, max_size=50))
def test_fast_paths_match_the_general_path_without_flow_control(program: list[Any]) -> None:
    config = EngineConfig(
        frag_size=256,
        ack_delay=0.002,
        flow_control=False,
        max_unacked_packets=3,
        max_unacked_bytes=700,
        max_message_size=200,
    )
    run_program(program, config, ring=6)


def test_the_twin_sees_a_protocol_error_on_both_sides() -> None:
    """The differential harness itself: a lying ack raises on both engines alike."""
    link = twin_link(EngineConfig(frag_size=256), ring=6)
    link.connect()
    link.a.conn.send(1, 2, b"hello", token=b"t")
    frame = b"".join(bytes(x) for x in link.a.conn.frames_to_send(0.0, None)[0])
    lying = mangle_field(frame, 1, 5, 0)  # ack 5: a seq b never sent
    with pytest.raises(RemoteProtocolError, match="never sent"):
        link.b.conn.receive_frame(memoryview(bytearray(lying)), 0.0)
    assert link.b.conn.state is ConnState.ERROR


def test_a_streamed_run_takes_the_fast_paths() -> None:
    """The common case really is fast: a clean stream leaves no work for the general loop."""
    config = EngineConfig(frag_size=256)
    a = Connection("127.0.0.1", "127.0.0.2", generation=1, config=config)
    b = Connection("127.0.0.2", "127.0.0.1", generation=2, config=config)
    a.start_connect(0.0)
    a.receives_posted(64)
    hs_a = a.handshake()
    b.incoming_connect(0.0)
    b.receives_posted(64)
    hs_b = b.handshake()
    b.transport_up(hs_a, 0.0)
    a.transport_up(hs_b, 0.0)
    general: list[str] = []
    for conn in (a, b):
        for name in ("_fill", "_receive"):
            original = getattr(conn, name)

            def spy(*args: Any, _name: str = name, _original: Any = original) -> Any:
                general.append(_name)
                return _original(*args)

            setattr(conn, name, spy)
    received = 0
    for i in range(40):
        a.send(1, 2, b"m%d" % i, token=i)
        for header, payload in a.frames_to_send(0.0, 8):
            b.receive_frame(header + bytes(payload), 0.0)
            b.receives_posted(1)
        for header, payload in b.frames_to_send(0.0, 8):
            a.receive_frame(header + bytes(payload), 0.0)
            a.receives_posted(1)
        while b.next_event() is not None:
            received += 1
    assert received == 40
    assert general == []


def _up_twins(config: EngineConfig, ring: int) -> tuple[Twin, Twin]:
    link = twin_link(config, ring)
    link.connect()
    a, b = link.a.conn, link.b.conn
    assert isinstance(a, Twin) and isinstance(b, Twin)
    return a, b


def _frames(twin: Twin) -> list[bytes]:
    return [h + bytes(p) for h, p in twin.frames_to_send(0.0, None)]


#: one perturbation: (field, how); fields 0-9 are the header's, 10 the payload, 11 the ext byte
perturbation = st.tuples(
    st.integers(0, 11),
    st.sampled_from(["+1", "-1", "zero", "one", "bit0", "bit1", "bit2", "bit3", "bit4", "bit5"]),
)
crafted_frame = st.tuples(
    st.sampled_from(["data", "data", "ack"]),
    st.sampled_from([0, 2, 4, 6]),  # data flags: ACK_REQUIRED and/or RETRANSMITTED
    st.sampled_from([0, 5, 255, 256]),  # payload bytes
    st.lists(perturbation, max_size=2),
)
_LIMITS = (1 << 64, 1 << 64, 1 << 32, 1 << 16, 1 << 16, 256, 256, 1 << 16, 1 << 16, 1 << 16)


def _moved(old: int, how: str) -> int:
    """One header field moved by ``how``: ``bitN`` flips bit N, else +1, -1, zero or one."""
    if how.startswith("bit"):
        return old ^ (1 << int(how[3:]))
    return {"+1": old + 1, "-1": old - 1, "zero": 0, "one": 1}[how]


def craft(
    kind: str, flags: int, size: int, perturbations: list[tuple[int, str]], seq: int, ack: int
) -> bytes:
    """The valid next data frame (or ack) for ``seq``/``ack``, then perturbed."""
    if kind == "ack":
        fields = [0, ack, 0, 0, 0, 0, 0, 0, 1, 0]
        size = 0
    else:
        fields = [seq, ack, size, 1, 2, flags, 0, 0, 1, 0]
    ext = 0
    for field, how in perturbations:
        if field == 10:
            size = max(0, size + (1 if how in ("+1", "one") else -1))
            continue
        new = _moved(ext if field == 11 else fields[field], how)
        if field == 11:
            ext = new % 256
        else:
            fields[field] = new % _LIMITS[field]
    return _HEADER.pack(*fields) + bytes((ext,)) + bytes(15) + b"p" * size


@SETTINGS
@given(
    st.integers(0, 3),  # messages a -> b first
    st.integers(0, 3),  # messages b -> a first
    st.booleans(),  # leave b reassembling a two-fragment message
    st.booleans(),  # flow control
    st.lists(crafted_frame, min_size=1, max_size=8),
)
def test_crafted_frames_take_the_same_fate_on_both_paths(
    to_b: int, to_a: int, partial: bool, flow: bool, crafted: list[Any]
) -> None:
    """Frames a hair away from the fast path's conditions (seq, ack, flags, ports, lengths,
    fragments, checksum, ext, credits) are accepted, rejected or counted alike; b posts no
    new receives, so its peer's credits run out along the way."""
    config = EngineConfig(frag_size=256, max_message_size=1000, flow_control=flow)
    a, b = _up_twins(config, ring=5)
    for i in range(to_b):
        a.send(1, 2, b"to b %d" % i, token=i)
    for i in range(to_a):
        b.send(2, 1, b"to a %d" % i, token=i)
    for frame in _frames(a):
        b.receive_frame(memoryview(bytearray(frame)), 0.0)
    for frame in _frames(b):
        a.receive_frame(memoryview(bytearray(frame)), 0.0)
    if partial:
        a.send(1, 2, bytes(300), token="big")
        first = _frames(a)[0]
        b.receive_frame(memoryview(bytearray(first)), 0.0)
    for kind, flags, size, perturbations in crafted:
        if b.state is not ConnState.UP:
            break
        frame = craft(
            kind, flags, size, perturbations, b.fast.next_rx_seq or 1, b.fast._highest_sent
        )
        with contextlib.suppress(RemoteProtocolError):
            b.receive_frame(memoryview(bytearray(frame)), 0.0)
        b.frames_to_send(0.0, 2)


#: every single perturbation :func:`craft` knows, none first
_SINGLE: list[list[tuple[int, str]]] = [[]] + [
    [(field, how)]
    for field in range(12)
    for how in (
        [f"bit{i}" for i in range(6)] + ["+1", "zero"]
        if field == 5
        else ["+1", "-1"]
        if field == 10
        else ["one", "+1"]
        if field == 11
        else ["+1", "-1", "zero", "one"]
    )
]
_BASES = [("ack", 0, 0)] + [
    ("data", flags, size) for flags in (0, 2, 4, 6) for size in (0, 5, 255, 256, 257)
]


@pytest.mark.parametrize(
    ("flow", "before", "max_message_size"),
    [
        (True, "fresh", 1000),
        (True, "partial", 1000),
        (True, "exhausted", 1000),
        (False, "fresh", 1000),
        (False, "fresh", 200),
        (False, "partial", 1000),
    ],
)
def test_every_single_perturbation_takes_the_same_fate(
    flow: bool, before: str, max_message_size: int
) -> None:
    """Exhaustively: each valid frame, and each of it with one field moved, meets the same
    fate on both paths (a fresh pair each time, in the state ``before`` names)."""
    config = EngineConfig(frag_size=256, max_message_size=max_message_size, flow_control=flow)
    for kind, flags, size in _BASES:
        for perturbations in _SINGLE:
            a, b = _up_twins(config, ring=4)
            a.send(1, 2, b"first", token=0)
            b.send(2, 1, b"reply", token=1)
            for frame in _frames(a):
                b.receive_frame(memoryview(bytearray(frame)), 0.0)
            for frame in _frames(b):
                a.receive_frame(memoryview(bytearray(frame)), 0.0)
            if before == "partial":
                a.send(1, 2, bytes(300), token=2)
                b.receive_frame(memoryview(bytearray(_frames(a)[0])), 0.0)
            elif before == "exhausted":
                while b.fast._peer_credits:
                    frame = craft("ack", 0, 0, [], 0, b.fast._highest_sent)
                    b.receive_frame(memoryview(bytearray(frame)), 0.0)
            frame = craft(
                kind, flags, size, perturbations, b.fast.next_rx_seq or 1, b.fast._highest_sent
            )
            with contextlib.suppress(RemoteProtocolError):
                b.receive_frame(memoryview(bytearray(frame)), 0.0)
            b.frames_to_send(0.0, 2)


def test_a_throttled_sender_resumes_on_its_last_credit_alike() -> None:
    """Credits running out, the last one kept for a grant, and grants over 255 per header."""
    a, b = _up_twins(EngineConfig(frag_size=256), ring=2)
    for i in range(4):
        a.send(1, 2, b"m%d" % i, token=i)
    assert len(a.frames_to_send(0.0, None)) == 1  # the last credit waits for a grant
    assert a.fast._throttled
    a.receives_posted(300)  # now there is something to grant: more than one header holds
    frames = a.frames_to_send(0.0, None)
    assert len(frames) == 1
    assert a.fast.statistics().ib_tx_throttle == 2  # sent, then out of credits again
    assert _HEADER.unpack_from(frames[0][0])[6] == 255
    for frame in _frames(b):  # b grants a its credits back
        a.receive_frame(memoryview(bytearray(frame)), 0.0)


def perturb_frame(frame: bytes, perturbations: list[tuple[int, str]]) -> bytes:
    """``frame`` (a header with its ext area, then the payload) with header fields moved as
    :func:`craft` moves them; field 10 grows or shrinks the payload, 11 sets the ext length."""
    fields = list(_HEADER.unpack_from(frame))
    ext = frame[32]
    payload = frame[HEADER_SIZE:]
    for field, how in perturbations:
        if field == 10:
            payload = payload + b"q" if how in ("+1", "one") else payload[:-1]
            continue
        new = _moved(ext if field == 11 else fields[field], how)
        if field == 11:
            ext = new % 256
        else:
            fields[field] = new % _LIMITS[field]
    return _HEADER.pack(*fields) + bytes((ext,)) + frame[33:HEADER_SIZE] + payload


@pytest.mark.parametrize(
    ("flow", "ext", "before"),
    [
        (True, b"", "fresh"),
        (True, b"e", "fresh"),
        (False, b"", "fresh"),
        (False, b"e", "fresh"),
        (True, b"", "exhausted"),
        (True, b"", "throttled"),
    ],
)
@pytest.mark.parametrize("which", [1, 2])  # the middle or the last of three fragments
def test_every_single_perturbation_of_the_next_fragment_takes_the_same_fate(
    flow: bool, ext: bytes, before: str, which: int
) -> None:
    """The continuation fast path: the next fragment of a message being reassembled, valid
    and with each single field moved, meets the same fate on both paths. Each fragment
    carries a newer ack than the one before (a gets another message of b's between them);
    ``exhausted``: the fragment arrives with a out of credits; ``throttled``: b waits for
    credits."""
    config = EngineConfig(frag_size=256, flow_control=flow)
    for perturbations in _SINGLE:
        a, b = _up_twins(config, ring=8)
        if before == "throttled":
            for i in range(9):
                b.send(2, 1, b"early %d" % i, token=i)
            for frame in _frames(b):
                a.receive_frame(memoryview(bytearray(frame)), 0.0)
            assert b.fast._throttled
        a.send(1, 2, bytes(range(200)) * 3, token=0, ext=ext)
        fragments: list[bytes] = []
        for i in range(3):
            b.send(2, 1, b"reply %d" % i, token=f"r{i}")
            for frame in _frames(b):
                a.receive_frame(memoryview(bytearray(frame)), 0.0)
            fragments += [h + bytes(p) for h, p in a.frames_to_send(0.0, 1)]
        assert [_HEADER.unpack_from(f)[7] for f in fragments] == [0, 1, 2]
        if before == "exhausted":
            while b.fast._peer_credits > which:
                frame = craft("ack", 0, 0, [], 0, b.fast._highest_sent)
                b.receive_frame(memoryview(bytearray(frame)), 0.0)
        for frame in fragments[:which]:
            b.receive_frame(memoryview(bytearray(frame)), 0.0)
        frame = perturb_frame(fragments[which], perturbations)
        with contextlib.suppress(RemoteProtocolError):
            b.receive_frame(memoryview(bytearray(frame)), 0.0)
        b.frames_to_send(0.0, 2)


@pytest.mark.parametrize("flow", [True, False])
def test_a_congestion_update_in_fragments_takes_the_general_path_alike(flow: bool) -> None:
    """A congestion map too big for one fragment (seq 0) is reassembled by the general code,
    and each single perturbation of its second fragment meets the same fate."""
    config = EngineConfig(frag_size=256, flow_control=flow)
    for perturbations in _SINGLE:
        a, b = _up_twins(config, ring=8)
        a.queue_cong_update(CongestionMap(range(1000, 1300)))  # ~900 bytes of msgpack
        fragments = _frames(a)
        assert len(fragments) >= 3 and _HEADER.unpack_from(fragments[1])[:1] == (0,)
        b.receive_frame(memoryview(bytearray(fragments[0])), 0.0)
        frame = perturb_frame(fragments[1], perturbations)
        with contextlib.suppress(RemoteProtocolError):
            b.receive_frame(memoryview(bytearray(frame)), 0.0)
        if not perturbations:
            for frame in fragments[2:]:
                b.receive_frame(memoryview(bytearray(frame)), 0.0)
            assert b.fast.peer_congested(1299) and b.ref.peer_congested(1299)
