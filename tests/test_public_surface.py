"""The public surface: every exported name is documented, errors share one root."""

import inspect

import rdsx
import rdsx.errors
import rdsx.verbs


def test_every_public_name_has_a_docstring() -> None:
    for module in (rdsx, rdsx.verbs, rdsx.errors):
        for name in dir(module):
            if name.startswith("_"):
                continue
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert inspect.getdoc(obj), f"{module.__name__}.{name} has no docstring"


def test_errors_share_one_root() -> None:
    for name in rdsx.errors.__all__:
        assert issubclass(getattr(rdsx.errors, name), rdsx.RdsError), name


def test_transports_are_registered() -> None:
    assert {"sim", "tcp"} <= set(rdsx.available_transports())


def test_node_api_is_exported() -> None:
    for name in (
        "open_node",
        "Node",
        "Socket",
        "NodeConfig",
        "RdmaArgs",
        "RdmaNotification",
        "RdmaStatus",
        "Counters",
        "NodeInfo",
        "SocketInfo",
        "ConnectionInfo",
        "MessageInfo",
        "Datagram",
        "CongestionUpdate",
        "ModeUnavailable",
    ):
        assert hasattr(rdsx, name), name
    for cls in (rdsx.Node, rdsx.Socket):
        for attr, member in vars(cls).items():
            if not attr.startswith("_") and callable(member):
                assert inspect.getdoc(member), f"{cls.__name__}.{attr} has no docstring"
