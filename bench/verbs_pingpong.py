"""RC SEND ping-pong on the sim fabric versus a trio memory-channel ping-pong.

Run it as ``python -m bench.verbs_pingpong [--seconds N] [--pairs 7] [--size 4096]``.

Both halves run in the same process under trio's real clock, one after the
other: ``pairs`` ping tasks each bounce a ``size``-byte message off a pong task
and count round trips. The baseline passes the message through two
``trio.open_memory_channel(1)`` pairs (copying it out of and into a buffer, as
the fabric does); the sim half posts a SEND on an RC QP connected by the CM and
waits for the reply's receive completion. The ratio says what the fabric costs
on top of trio's own task-switching ceiling.
"""

from __future__ import annotations

import argparse
import time

import trio

from rdsx.verbs import (
    QP,
    Access,
    CmId,
    Context,
    Opcode,
    RecvWR,
    SendWR,
    Sge,
    WcOpcode,
    WcStatus,
)
from transports.sim import open_fabric

__all__ = ["main", "memory_pingpong", "sim_pingpong"]

ACCESS = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ


async def memory_pingpong(seconds: float, pairs: int, size: int) -> int:
    """Round trips of ``pairs`` memory-channel ping-pongs in ``seconds``."""
    count = 0
    deadline = trio.current_time() + seconds

    async def pair() -> None:
        nonlocal count
        to_pong, pong_in = trio.open_memory_channel[bytes](1)
        to_ping, ping_in = trio.open_memory_channel[bytes](1)
        buf_ping, buf_pong = bytearray(size), bytearray(size)

        async def pong() -> None:
            async for msg in pong_in:
                buf_pong[:] = msg
                await to_ping.send(bytes(buf_pong))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pong)
            while trio.current_time() < deadline:
                await to_pong.send(bytes(buf_ping))
                buf_ping[:] = await ping_in.receive()
                count += 1
            await to_pong.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(pairs):
            nursery.start_soon(pair)
    return count


class _End:
    def __init__(self, ctx: Context, size: int, signaled: bool) -> None:
        self.pd = ctx.alloc_pd()
        self.cq = ctx.create_cq()
        self.qp: QP = self.pd.create_qp(self.cq, self.cq)
        self.buf = bytearray(2 * size)
        self.mr = self.pd.reg_mr(self.buf, ACCESS)
        self.send_wr = SendWR(
            1, Opcode.SEND, (Sge(self.mr.addr, size, self.mr.lkey),), signaled=signaled
        )
        self.recv_wr = RecvWR(2, (Sge(self.mr.addr + size, size, self.mr.lkey),))


async def sim_pingpong(seconds: float, pairs: int, size: int, signaled: bool = False) -> int:
    """Round trips of ``pairs`` RC SEND ping-pongs over the sim fabric in ``seconds``.

    With ``signaled=False`` (as latency tools do) the SENDs produce no completion
    of their own: the reply's receive completion is the only thing waited for.
    """
    count = 0
    async with open_fabric(trace=False) as fabric:
        host_a, host_b = fabric.add_host("hostA"), fabric.add_host("hostB")
        dev_a = await fabric.attach(fabric.create_vm("vmA", address="127.0.0.1"), host_a)
        dev_b = await fabric.attach(fabric.create_vm("vmB", address="127.0.0.2"), host_b)
        ctx_a, ctx_b = await dev_a.open(), await dev_b.open()
        ends: list[tuple[_End, _End]] = []
        cm_ids: list[CmId] = []
        for index in range(pairs):
            ping, pong = _End(ctx_a, size, signaled), _End(ctx_b, size, signaled)
            listener = await ctx_b.cm_listen(7000 + index)
            async with trio.open_nursery() as nursery:

                async def accept(pong: _End = pong, listener: object = listener) -> None:
                    request = await listener.get_request()  # type: ignore[attr-defined]
                    cm_ids.append(await request.accept(pong.qp))

                nursery.start_soon(accept)
                cm_ids.append(await ctx_a.cm_connect(ping.qp, "127.0.0.2", 7000 + index))
            ends.append((ping, pong))
        deadline = trio.current_time() + seconds

        async def run_pong(end: _End) -> None:
            qp, cq, send_wr, recv_wr = end.qp, end.cq, end.send_wr, end.recv_wr
            qp.post_recv(recv_wr)
            while True:
                for wc in await cq.wait():
                    if wc.status is not WcStatus.SUCCESS:
                        return
                    if wc.opcode is WcOpcode.RECV:
                        qp.post_recv(recv_wr)
                        qp.post_send(send_wr)

        async def run_ping(end: _End) -> None:
            nonlocal count
            qp, cq, send_wr, recv_wr = end.qp, end.cq, end.send_wr, end.recv_wr
            qp.post_recv(recv_wr)
            while trio.current_time() < deadline:
                qp.post_send(send_wr)
                got = False
                while not got:
                    for wc in await cq.wait():
                        assert wc.status is WcStatus.SUCCESS, wc
                        if wc.opcode is WcOpcode.RECV:
                            got = True
                            qp.post_recv(recv_wr)
                count += 1

        async with trio.open_nursery() as nursery:
            for _, pong in ends:
                nursery.start_soon(run_pong, pong)
            async with trio.open_nursery() as pings:
                for ping, _ in ends:
                    pings.start_soon(run_ping, ping)
            nursery.cancel_scope.cancel()
        ctx_a.close()
        ctx_b.close()
    return count


def main(argv: list[str] | None = None) -> None:
    """Run both ping-pongs and print round trips per second and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per kind")
    args = parser.parse_args(argv)
    runs = (
        ("memory-channel", memory_pingpong, ()),
        ("sim RC SEND", sim_pingpong, (False,)),
        ("sim, signaled", sim_pingpong, (True,)),
    )
    # Interleaved rounds, so that a shared machine's load hits every kind alike.
    counts = dict.fromkeys((name for name, _, _ in runs), 0)
    cpu = dict.fromkeys(counts, 0.0)
    for _ in range(args.rounds):
        for name, fn, extra in runs:
            start = time.process_time()
            counts[name] += trio.run(fn, args.seconds / args.rounds, args.pairs, args.size, *extra)
            cpu[name] += time.process_time() - start
    base = counts["memory-channel"]
    for name, count in counts.items():
        print(
            f"{name:>15}: {count / args.seconds:9.0f} round trips/s  ratio {base / count:5.2f}x"
            f"  cpu {cpu[name] / count * 1e6:6.1f} us/round trip"
            f"  ({args.pairs} pairs, {args.size} B, {args.seconds:g} s)"
        )


if __name__ == "__main__":
    main()
