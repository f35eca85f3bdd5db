"""Where the cluster secret comes from: a file or the environment, never a default."""

from __future__ import annotations

import os
from pathlib import Path

from rdsx.errors import SecretNotConfigured

__all__ = ["ENV_VAR", "MIN_SECRET_BYTES", "load_secret"]

ENV_VAR = "RDSX_SECRET"
#: Shorter secrets are refused: HMAC is only as strong as its key.
MIN_SECRET_BYTES = 16


def load_secret(path: str | os.PathLike[str] | None = None) -> bytes:
    """Read the shared cluster secret that authenticates every tcp handshake.

    Args:
        path: a file holding the secret (``--secret-file``); surrounding
            whitespace is stripped. Without it, the ``RDSX_SECRET`` environment
            variable is used.

    Returns:
        The secret as bytes.

    Raises:
        SecretNotConfigured: neither a file nor ``RDSX_SECRET`` is given, the file
            cannot be read, or the secret is shorter than 16 bytes.
    """
    if path is not None:
        try:
            secret = Path(path).read_bytes().strip()
        except OSError as exc:
            raise SecretNotConfigured(f"cannot read secret file {path}: {exc}") from None
        source = f"secret file {path}"
    else:
        value = os.environ.get(ENV_VAR)
        if value is None:
            raise SecretNotConfigured(
                f"no cluster secret: pass --secret-file PATH or set {ENV_VAR}"
            )
        secret = value.strip().encode()
        source = ENV_VAR
    return check_secret(secret, source)


def check_secret(secret: bytes | str, source: str = "secret") -> bytes:
    """Return ``secret`` as bytes if it is long enough to be a key.

    Raises:
        SecretNotConfigured: it is shorter than :data:`MIN_SECRET_BYTES`.
    """
    if isinstance(secret, str):
        secret = secret.encode()
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretNotConfigured(
            f"{source} is {len(secret)} bytes; at least {MIN_SECRET_BYTES} are required"
        )
    return secret
