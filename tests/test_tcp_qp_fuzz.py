"""Whatever an authenticated peer sends on a QP stream, the QP handles it or raises
RemoteProtocolError (which resets only that stream) — never anything else."""

from __future__ import annotations

import contextlib

import trio
from _tcp_helpers import ALL, make_end, pair
from hypothesis import given, settings
from hypothesis import strategies as st

from rdsx.errors import RemoteProtocolError
from rdsx.verbs import Opcode, QpAttr, QpDest, QpState, RecvWR, SendWR
from transports.tcp._frames import (
    Ack,
    Bye,
    Control,
    Frame,
    Nak,
    NakCode,
    ReadReq,
    ReadResp,
    Send,
    Write,
)


def frame_strategy(rkey: int, base: int) -> st.SearchStrategy[Frame]:
    """Frames whose PSNs, keys and addresses often hit what the QP has, often not."""
    psns = st.integers(0, 12) | st.integers(0, (1 << 24) - 1)
    small = st.binary(max_size=300)
    addrs = st.integers(base - 64, base + (1 << 16)) | st.integers(0, (1 << 64) - 1)
    keys = st.just(rkey) | st.integers(0, (1 << 32) - 1)
    imms = st.none() | st.integers(0, (1 << 32) - 1)
    return st.one_of(
        st.builds(Send, psns, imms, small),
        st.builds(Write, psns, imms, addrs, keys, small),
        st.builds(ReadReq, psns, addrs, keys, st.integers(0, 512) | st.integers(0, 1 << 25)),
        st.builds(ReadResp, psns, st.binary(min_size=64, max_size=64) | small),
        st.builds(Ack, psns),
        st.builds(Nak, psns, st.sampled_from(list(NakCode)), st.floats(0, 0.01)),
        st.just(Bye()),
        st.builds(Control, st.sampled_from(["ok", "rej", "dreq", "x"]), st.just({})),
    )


class FakeLink:
    """Stands in for the stream: collects what the QP sends back."""

    peer_max_frame = 1 << 25
    peer = "fuzz"

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)

    def send_parts(self, parts: list[bytes | memoryview], frames: int, size: int) -> None:
        assert sum(map(len, parts)) == size and 0 < frames <= len(parts)
        self.sent.append(b"".join(parts))

    def close(self, *, flush: bool = False) -> None:
        self.closed = True


async def test_qp_survives_arbitrary_frames() -> None:
    with trio.fail_after(60):
        async with pair() as (_net, dev, _other):
            end = await make_end(dev)

            frames = frame_strategy(end.mr.rkey, end.mr.addr)

            @settings(max_examples=150, deadline=None)
            @given(st.lists(frames, max_size=20), st.sampled_from(["fresh", "sends", "reads"]))
            def feed(batch: list[Frame], setup: str) -> None:
                qp = end.pd.create_qp(end.cq, end.cq)
                qp.modify(QpAttr(QpState.INIT, access_flags=ALL))
                # A peer locator that sorts after ours: this QP waits, it never dials out.
                qp.modify(
                    QpAttr(
                        QpState.RTR,
                        dest=QpDest("zzz:1", 1),
                        path_mtu=4096,
                        rq_psn=0,
                        min_rnr_timer=0.001,
                    )
                )
                qp.modify(QpAttr(QpState.RTS, sq_psn=0, timeout=1.0, retry_cnt=7, rnr_retry=3))
                link = FakeLink()
                qp.attach(link)  # type: ignore[attr-defined,arg-type]
                qp.post_recv([RecvWR(i, (end.sge(64 * i, 64),)) for i in range(4)])
                if setup != "fresh":
                    opcode = Opcode.SEND if setup == "sends" else Opcode.RDMA_READ
                    qp.post_send(
                        [
                            SendWR(i, opcode, (end.sge(1024 + 64 * i, 64),), rkey=end.mr.rkey)
                            for i in range(3)
                        ]
                    )
                with contextlib.suppress(RemoteProtocolError):
                    qp.frames_received(link, batch)  # type: ignore[attr-defined,arg-type]
                qp.close()
                end.cq.poll(4096)

            feed()
