"""The first slice of the sim fabric: hosts, VMs, attach, CM connect and a SEND."""

from __future__ import annotations

import trio
import trio.testing
from sim_support import connect

from rdsx.verbs import Opcode, QpState, WcOpcode, WcStatus
from transports.sim import open_fabric


async def test_cm_connect_and_send(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(5):
        async with open_fabric(port_model="vswitch", seed=1) as fabric:
            host_a = fabric.add_host("hostA", num_vfs=2)
            host_b = fabric.add_host("hostB", num_vfs=2)
            vm_a = fabric.create_vm("vmA", address="127.0.0.1")
            vm_b = fabric.create_vm("vmB", address="127.0.0.2")
            dev_a = await fabric.attach(vm_a, host_a)
            dev_b = await fabric.attach(vm_b, host_b)
            assert await vm_a.devices.next_device() is dev_a
            a, b = await connect(dev_a, dev_b)
            assert a.cm_id is not None and b.cm_id is not None
            assert a.cm_id.private_data == b"welcome"
            assert b.cm_id.private_data == b"hello"
            assert a.qp.state is QpState.RTS and b.qp.state is QpState.RTS
            b.post_recv(11, 0, 4096)
            a.buf[:5] = b"hello"
            a.send(22, 0, 5, opcode=Opcode.SEND_WITH_IMM, imm_data=99)
            (recv,) = await b.completions(1)
            (sent,) = await a.completions(1)
            assert (recv.wr_id, recv.status, recv.opcode, recv.byte_len, recv.imm_data) == (
                11,
                WcStatus.SUCCESS,
                WcOpcode.RECV,
                5,
                99,
            )
            assert bytes(b.buf[:5]) == b"hello"
            assert (sent.wr_id, sent.status, sent.opcode) == (22, WcStatus.SUCCESS, WcOpcode.SEND)
            assert fabric.sm.sa_queries == 1
