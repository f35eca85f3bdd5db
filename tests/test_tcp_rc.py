"""RC semantics of the tcp transport over real loopback sockets."""

from __future__ import annotations

import trio
from _tcp_helpers import bring_up, make_end, pair, wait_wcs

from rdsx.verbs import WcOpcode, WcStatus


async def test_two_devices_exchange_sends_in_order() -> None:
    with trio.fail_after(5):
        async with pair() as (_net, da, db):
            a, b = await make_end(da), await make_end(db)
            bring_up(a, b)
            b.post_recvs(64)
            a.post_recvs(64)
            for i in range(50):
                a.send(i, f"msg-{i}".encode(), offset=i * 16)
            sends = await wait_wcs(a.cq, 50)
            assert [wc.wr_id for wc in sends] == list(range(50))
            assert all(wc.status is WcStatus.SUCCESS and wc.opcode is WcOpcode.SEND for wc in sends)
            recvs = await wait_wcs(b.cq, 50)
            assert [wc.wr_id for wc in recvs] == list(range(50))
            for wc in recvs:
                data = bytes(b.mr.buffer[wc.wr_id * 256 : wc.wr_id * 256 + wc.byte_len])
                assert data == f"msg-{wc.wr_id}".encode()
            b.send(7, b"back")
            assert (await wait_wcs(a.cq, 1))[0].byte_len == 4
            assert (await wait_wcs(b.cq, 1))[0].wr_id == 7
