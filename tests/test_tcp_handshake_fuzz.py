"""The listener's side of the handshake, fed arbitrary control frames: it refuses with
AuthenticationFailed or RemoteProtocolError, never anything else."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from rdsx.errors import AuthenticationFailed, RemoteProtocolError
from transports.tcp._auth import accept_handshake
from transports.tcp._frames import Control, Frame
from transports.tcp._stats import Counters

# No st.text: building Hypothesis's unicode tables costs seconds and finds nothing here.
words = st.sampled_from(["", "x", "hello", "é"])
scalars = st.none() | st.booleans() | st.integers() | st.binary(max_size=40) | words
values = scalars | st.lists(scalars, max_size=2) | st.binary(min_size=32, max_size=32)
fields = st.fixed_dictionaries(
    {}, optional={key: values for key in ("v", "n", "mf", "m", "r", "why", "zz")}
)
controls = st.builds(
    Control, st.sampled_from(["hello", "auth", "deny", "challenge", "rep", "x"]), fields
)


class ScriptedLink:
    """A link that replays ``frames`` and swallows what is sent."""

    peer = "fuzz"

    def __init__(self, frames: list[Frame]) -> None:
        self.frames = list(frames)
        self.counters = Counters()
        self.peer_max_frame = 0

        class _Decoder:
            max_frame = 0

        self.decoder = _Decoder()

    async def next_frame(self) -> Frame:
        if not self.frames:
            raise RemoteProtocolError("EOF")
        return self.frames.pop(0)

    def send(self, frame: bytes) -> None:
        pass

    async def flush(self) -> None:
        pass


@settings(max_examples=120, deadline=None)
@given(st.lists(controls, min_size=1, max_size=3))
def test_accept_handshake_refuses_garbage(frames: list[Any]) -> None:
    link = ScriptedLink(frames)
    # Nothing here waits on trio, so one send() runs the coroutine to its end.
    coro = accept_handshake(link, b"fuzz-secret-0123456789", 1 << 20)  # type: ignore[arg-type]
    try:
        coro.send(None)
    except (AuthenticationFailed, RemoteProtocolError):
        return
    except StopIteration:
        raise AssertionError("a handshake without the secret was accepted") from None
    raise AssertionError("the handshake waited on something real")
