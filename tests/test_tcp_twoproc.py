"""Two processes, one QP each, over real TCP: the transport is not tied to one event loop."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import trio
from _ports import free_port
from _tcp_helpers import make_end

from transports.tcp import TcpTransport
from transports.tcp.harness import TEST_SECRET

HERE, THERE = "127.0.0.41", "127.0.0.42"

CHILD = textwrap.dedent(
    """
    import sys, trio
    from rdsx.verbs import Access, RecvWR, Sge
    from transports.tcp import TcpTransport

    async def main(port):
        async with TcpTransport().open_network(secret=sys.argv[2].encode(), port=port) as net:
            device = await (await net.add_node("127.0.0.42")).next_device()
            ctx = await device.open()
            pd, cq = ctx.alloc_pd(), ctx.create_cq()
            mr = pd.reg_mr(bytearray(1 << 16), Access.LOCAL_WRITE)
            qp = pd.create_qp(cq, cq)
            listener = await ctx.cm_listen(7)
            print("listening", flush=True)
            request = await listener.get_request()
            cm_id = await request.accept(qp, b"child:" + request.private_data)
            qp.post_recv([RecvWR(i, (Sge(mr.addr + 64 * i, 64, mr.lkey),)) for i in range(50)])
            got = []
            while len(got) < 50:
                got += await cq.wait()
            print(b"|".join(bytes(mr.buffer[64 * wc.wr_id: 64 * wc.wr_id + wc.byte_len])
                            for wc in got).decode(), flush=True)
            await cm_id.next_event()  # DISCONNECTED

    trio.run(main, int(sys.argv[1]))
    """
)


async def test_two_processes_connect_and_exchange_in_order() -> None:
    port = free_port(HERE, THERE)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            child = await nursery.start(
                lambda task_status: trio.run_process(
                    [sys.executable, "-c", CHILD, str(port), TEST_SECRET.decode()],
                    stdout=subprocess.PIPE,
                    check=False,
                    task_status=task_status,
                )
            )
            assert child.stdout is not None
            buffered = b""
            while b"listening\n" not in buffered:
                buffered += await child.stdout.receive_some(4096)
            async with TcpTransport().open_network(secret=TEST_SECRET, port=port) as net:
                device = (await net.add_node(HERE)).device
                assert device is not None
                end = await make_end(device)
                cm_id = await end.ctx.cm_connect(end.qp, THERE, 7, b"parent")
                assert cm_id.private_data == b"child:parent"
                for i in range(50):
                    end.send(i, f"m{i}".encode(), offset=8 * i)
                got = []
                while len(got) < 50:
                    got += await end.cq.wait()
                assert [wc.wr_id for wc in got] == list(range(50))
                await cm_id.disconnect()
            output = buffered.split(b"listening\n", 1)[1]
            while output.count(b"\n") < 1:
                output += await child.stdout.receive_some(4096)
            assert output.strip().split(b"|") == [f"m{i}".encode() for i in range(50)]
            assert await child.wait() == 0
