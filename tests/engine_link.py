"""A fake link joining two engines (h11's ConnectionPair, aioquic's ``transfer``)."""

from __future__ import annotations

import random
from collections.abc import Callable

from rdsx.engine import Connection, ConnState, EngineConfig, Event
from rdsx.errors import RemoteProtocolError

#: receive buffers each side posts per transport
RING = 32


class Side:
    """One end: its engine, the receive buffers it has posted, what it saw."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.posted = 0
        self.events: list[Event] = []
        self.protocol_errors = 0


class Link:
    """Two engines and the frames in flight between them, with a clock.

    ``mangle`` may rewrite each batch of frames in flight (drop, duplicate,
    reorder); a frame arriving with no posted receive buffer is an RNR error,
    which RDS credits must make impossible, so it fails the test.
    """

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        gen_a: int = 11,
        gen_b: int = 22,
        ring: int = RING,
    ) -> None:
        self.now = 0.0
        self.ring = ring
        self.a = Side(Connection("127.0.0.1", "127.0.0.2", generation=gen_a, config=config))
        self.b = Side(Connection("127.0.0.2", "127.0.0.1", generation=gen_b, config=config))
        self.mangle: Callable[[list[bytes]], list[bytes]] | None = None
        #: a frame with no receive buffer posted fails the test (False: it resets, like RNR)
        self.strict_credits = True
        self.sent_frames: list[tuple[str, bytes]] = []
        #: bumped whenever the transport is replaced: frames of an older epoch are dead
        self.epoch = 0

    def peer(self, side: Side) -> Side:
        return self.b if side is self.a else self.a

    def connect(self) -> None:
        """a initiates (127.0.0.1 is lower); both come UP."""
        a, b = self.a, self.b
        a.conn.start_connect(self.now)
        a.conn.receives_posted(self.ring)
        a.posted = self.ring
        hs_a = a.conn.handshake()
        assert b.conn.incoming_connect(self.now)
        b.conn.receives_posted(self.ring)
        b.posted = self.ring
        hs_b = b.conn.handshake()
        b.conn.transport_up(hs_a, self.now)
        a.conn.transport_up(hs_b, self.now)

    def replace(self) -> None:
        """a's transport dies unseen by b; a reconnects and b, still UP, takes the new one."""
        a, b = self.a, self.b
        self.epoch += 1
        if b.conn.state is not ConnState.UP:
            self.reset()
            self.connect()
            return
        a.conn.transport_down(self.now)
        a.conn.start_connect(self.now)
        a.conn.receives_posted(self.ring)
        a.posted = self.ring
        hs_a = a.conn.handshake()
        assert b.conn.incoming_connect(self.now)
        assert b.conn.state is ConnState.RESETTING
        b.conn.receives_posted(self.ring)
        b.posted = self.ring
        hs_b = b.conn.handshake()
        b.conn.transport_up(hs_a, self.now)
        a.conn.transport_up(hs_b, self.now)

    def reset(self) -> None:
        """The transport dies on both sides: frames in flight are lost."""
        self.epoch += 1
        for side in (self.a, self.b):
            side.conn.transport_down(self.now)
            side.posted = 0

    def pull(self, side: Side) -> list[bytes]:
        frames = [h + bytes(p) for h, p in side.conn.frames_to_send(self.now)]
        for frame in frames:
            self.sent_frames.append(("a" if side is self.a else "b", frame))
        return frames

    def deliver(self, side: Side, frames: list[bytes]) -> bool:
        """Deliver to ``side``; False if a protocol error reset the link."""
        for frame in frames:
            if side.posted == 0:
                assert not self.strict_credits, "frame arrived with no receive buffer posted"
                self.drain()
                self.reset()
                return False
            side.posted -= 1
            try:
                # as a path does: a view of a receive buffer that is reused afterwards
                buf = bytearray(frame)
                side.conn.receive_frame(memoryview(buf), self.now)
                buf[:] = bytes(len(buf))
            except RemoteProtocolError:
                side.protocol_errors += 1
                self.drain()
                self.reset()
                return False
            side.conn.receives_posted(1)
            side.posted += 1
        self.drain()
        return True

    def drain(self) -> None:
        for side in (self.a, self.b):
            while (event := side.conn.next_event()) is not None:
                side.events.append(event)

    def step(self) -> bool:
        """One exchange each way; True if anything moved."""
        moved = False
        for side in (self.a, self.b):
            frames = self.pull(side)
            if self.mangle is not None:
                frames = self.mangle(frames)
            if frames:
                moved = True
                if not self.deliver(self.peer(side), frames):
                    return True
        return moved

    def run(self, max_steps: int = 10_000) -> None:
        """Exchange until quiet, firing timers as the clock advances."""
        for _ in range(max_steps):
            if self.step():
                continue
            timers = [t for t in (self.a.conn.get_timer(), self.b.conn.get_timer()) if t]
            if not timers:
                self.drain()
                return
            self.now = max(self.now, min(timers))
            for side in (self.a, self.b):
                side.conn.handle_timer(self.now)
        raise AssertionError("link did not go quiet")


def seeded(seed: int) -> random.Random:
    return random.Random(seed)


def perturb(
    frames: list[bytes], plan: list[int], rewrite: Callable[[int, bytes], bytes] | None = None
) -> list[bytes]:
    """Frames as a faulty network delivers them, one ``plan`` action per frame.

    Actions: 0 deliver, 1 drop, 2 duplicate, 3 swap with the next frame (deliver if
    last), 4 deliver ``rewrite(i, frame)`` (deliver as is without ``rewrite``); frames
    past the end of ``plan`` are delivered.
    """
    out: list[bytes] = []
    i = 0
    while i < len(frames):
        action = plan[i] if i < len(plan) else 0
        if action == 1:
            pass
        elif action == 2:
            out += [frames[i], frames[i]]
        elif action == 3 and i + 1 < len(frames):
            out += [frames[i + 1], frames[i]]
            i += 1
        elif action == 4 and rewrite is not None:
            out.append(rewrite(i, frames[i]))
        else:
            out.append(frames[i])
        i += 1
    return out
