"""The tcp transport alone: RC SENDs over soft verbs against a plain trio TCP exchange.

``python -m bench.tcp_verbs [--size BYTES] [--count N] [--window W]`` streams ``N``
messages between two devices of one process (SEND into posted receives, reposted
as they complete) and the same messages over a plain trio TCP connection
(length-prefixed, one cumulative app-level ack per read), and prints the CPU time
per message of each. CPU time, not wall time: the figure must not depend on what
else the machine runs. No rdsx node is involved: this isolates the transport's cost.

``--stages`` instead times the QP's Python alone, without sockets or tasks: a
requester QP and a responder QP joined by stand-in links, ``--batch`` one-WR
``post_send`` calls (rdsx's pattern), the frames decoded, delivered into posted
receives, and the cumulative ACK completing the sends; CPU per message per stage.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Coroutine
from typing import Any

import trio

from rdsx.verbs import Access, Opcode, QpAttr, QpCap, QpDest, QpState, RecvWR, SendWR, Sge
from transports.tcp import TcpDevice, TcpTransport

__all__ = ["main", "plain_tcp", "qp_stages", "tcp_verbs"]

_SECRET = b"bench-only-secret-0123456789"
_ALL = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ


async def tcp_verbs(size: int, count: int, window: int) -> dict[str, float]:
    """Stream ``count`` SENDs of ``size`` bytes, at most ``window`` outstanding."""
    async with TcpTransport().open_network(secret=_SECRET, port=0) as net:
        devices: list[TcpDevice] = []
        for address in ("127.0.0.1", "127.0.0.2"):
            node = await net.add_node(address)
            assert node.device is not None
            devices.append(node.device)
        ends = []
        for device in devices:
            ctx = await device.open()
            pd, cq = ctx.alloc_pd(), ctx.create_cq(1 << 16)
            qp = pd.create_qp(cq, cq, QpCap(max_send_wr=window, max_recv_wr=1024))
            mr = pd.reg_mr(bytearray(size * 1024), _ALL)
            ends.append((ctx, qp, cq, mr))
        for (_, qp, _, _), (ctx, peer, _, _) in (ends, ends[::-1]):
            qp.modify(QpAttr(QpState.INIT, access_flags=_ALL))
            dest = QpDest(ctx.query_port().address, peer.qp_num)
            qp.modify(QpAttr(QpState.RTR, dest=dest, path_mtu=4096, rq_psn=0, min_rnr_timer=0.001))
        for _, qp, _, _ in ends:
            qp.modify(QpAttr(QpState.RTS, sq_psn=0, timeout=0.5, retry_cnt=7, rnr_retry=7))
        (_, sqp, scq, smr), (_, rqp, rcq, rmr) = ends
        recv_sge = [Sge(rmr.addr + i * size, size, rmr.lkey) for i in range(1024)]
        rqp.post_recv([RecvWR(i, (recv_sge[i],)) for i in range(1024)])
        send_sge = [Sge(smr.addr + i * size, size, smr.lkey) for i in range(window)]
        start = time.process_time()

        async def receiver() -> None:
            received = 0
            while received < count:
                wcs = await rcq.wait(256)
                received += len(wcs)
                rqp.post_recv([RecvWR(wc.wr_id, (recv_sge[wc.wr_id],)) for wc in wcs])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            sent = done = 0
            while done < count:
                room = min(window - (sent - done), count - sent)
                if room:
                    wrs = [
                        SendWR(i, Opcode.SEND, (send_sge[i % window],))
                        for i in range(sent, sent + room)
                    ]
                    sqp.post_send(wrs)
                    sent += room
                done += len(await scq.wait(256))
        cpu = time.process_time() - start
        stats = net.statistics()
        return {
            "cpu_us_per_msg": cpu / count * 1e6,
            "frames_per_send_all": stats.tcp_frames_tx / max(1, stats.tcp_send_batches),
            "acks": stats.tcp_acks_tx,
        }


async def plain_tcp(size: int, count: int, window: int) -> dict[str, float]:
    """The same traffic over one plain trio TCP connection."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.2")
    port = listeners[0].socket.getsockname()[1]

    async def serve(stream: trio.SocketStream) -> None:
        buf = bytearray()
        got = 0
        while got < count:
            buf += await stream.receive_some(1 << 18)
            taken = pos = 0
            while len(buf) - pos >= 4:
                length = int.from_bytes(buf[pos : pos + 4], "big")
                if len(buf) - pos - 4 < length:
                    break
                _message = bytes(buf[pos + 4 : pos + 4 + length])
                pos += 4 + length
                taken += 1
            del buf[:pos]
            if taken:
                got += taken
                await stream.send_all(got.to_bytes(4, "big"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, serve, listeners)
        stream = await trio.open_tcp_stream("127.0.0.2", port)
        message = size.to_bytes(4, "big") + bytes(size)
        start = time.process_time()
        sent = acked = 0
        while acked < count:
            room = min(window - (sent - acked), count - sent)
            if room:
                await stream.send_all(message * room)
                sent += room
            acked = int.from_bytes((await stream.receive_some(4096))[-4:], "big")
        cpu = time.process_time() - start
        nursery.cancel_scope.cancel()
    return {"cpu_us_per_msg": cpu / count * 1e6}


class _StandInLink:
    """Collects what a QP queues on its link (the stages run without sockets)."""

    peer_max_frame = 1 << 25
    peer = "stand-in"
    closed = False

    def __init__(self) -> None:
        self.out: list[bytes | memoryview] = []

    def send(self, frame: bytes) -> None:
        self.out.append(frame)

    def send_parts(self, parts: list[bytes | memoryview], frames: int, size: int) -> None:
        self.out += parts

    def close(self, *, flush: bool = False) -> None:
        pass

    def take(self) -> bytes:
        data, self.out = b"".join(self.out), []
        return data


async def qp_stages(size: int, rounds: int, batch: int) -> dict[str, float]:
    """CPU microseconds per message of each stage of the QP's data path (no sockets)."""
    from transports.tcp._frames import FrameDecoder

    async with TcpTransport().open_network(secret=_SECRET, port=0) as net:
        ends = []
        for i, address in enumerate(("127.0.0.1", "127.0.0.2")):
            node = await net.add_node(address)
            assert node.device is not None
            ctx = await node.device.open()
            pd, cq = ctx.alloc_pd(), ctx.create_cq(1 << 16)
            qp = pd.create_qp(cq, cq, QpCap(max_send_wr=batch, max_recv_wr=batch))
            mr = pd.reg_mr(bytearray(size * batch), _ALL)
            qp.modify(QpAttr(QpState.INIT, access_flags=_ALL))
            # A peer that sorts after us and never answers: this QP never dials out.
            dest = QpDest("zzz:1", i + 1)
            qp.modify(QpAttr(QpState.RTR, dest=dest, path_mtu=4096, rq_psn=0, min_rnr_timer=0.001))
            qp.modify(QpAttr(QpState.RTS, sq_psn=0, timeout=60.0, retry_cnt=7, rnr_retry=7))
            link = _StandInLink()
            qp.attach(link)  # type: ignore[attr-defined]
            ends.append((qp, cq, mr, link))
        (sqp, scq, smr, slink), (rqp, rcq, rmr, rlink) = ends
        send_wrs = [
            SendWR(i, Opcode.SEND, (Sge(smr.addr + i * size, size, smr.lkey),))
            for i in range(batch)
        ]
        recv_wrs = [RecvWR(i, (Sge(rmr.addr + i * size, size, rmr.lkey),)) for i in range(batch)]
        to_responder, to_requester = FrameDecoder(1 << 24), FrameDecoder(1 << 24)
        clock = time.process_time
        post = decode = deliver = complete = 0.0
        for _ in range(rounds):
            rqp.post_recv(recv_wrs)
            t0 = clock()
            for wr in send_wrs:
                sqp.post_send([wr])
            t1 = clock()
            frames = to_responder.feed(slink.take())
            t2 = clock()
            rqp.frames_received(rlink, frames)  # type: ignore[attr-defined]
            t3 = clock()
            sqp.frames_received(slink, to_requester.feed(rlink.take()))  # type: ignore[attr-defined]
            t4 = clock()
            if len(scq.poll(batch)) != batch or len(rcq.poll(batch)) != batch:
                raise RuntimeError("a stage lost a completion")
            post, decode = post + t1 - t0, decode + t2 - t1
            deliver, complete = deliver + t3 - t2, complete + t4 - t3
        count = rounds * batch / 1e6
        return {
            "post_send": post / count,
            "join+decode": decode / count,
            "deliver": deliver / count,
            "ack+complete": complete / count,
            "cpu_us_per_msg": (post + decode + deliver + complete) / count,
        }


def main(argv: list[str] | None = None) -> int:
    """Run both and print CPU microseconds per message."""
    parser = argparse.ArgumentParser(prog="python -m bench.tcp_verbs", description=__doc__)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--stages", action="store_true", help="time the QP's stages alone")
    parser.add_argument("--batch", type=int, default=32, help="--stages: messages per round")
    args = parser.parse_args(argv)
    if args.stages:
        result = trio.run(qp_stages, args.size, max(1, args.count // args.batch), args.batch)
        stages = "  ".join(f"{k} {v:.2f}" for k, v in result.items() if k != "cpu_us_per_msg")
        print(f"qp stages {args.size:>7} B: {result['cpu_us_per_msg']:6.2f} CPU us/msg  {stages}")
        return 0
    runs: list[tuple[str, Callable[[int, int, int], Coroutine[Any, Any, dict[str, float]]]]] = [
        ("tcp verbs", tcp_verbs),
        ("plain trio TCP", plain_tcp),
    ]
    for name, run in runs:
        result = trio.run(run, args.size, args.count, args.window)
        extra = ", ".join(f"{k} {v:.1f}" for k, v in result.items() if k != "cpu_us_per_msg")
        print(f"{name:15} {args.size:>7} B: {result['cpu_us_per_msg']:6.1f} CPU us/msg  {extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
