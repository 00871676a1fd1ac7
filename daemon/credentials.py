"""Where ``${credential:NAME}`` is read from outside systemd, and what an encrypted one looks like.

Under systemd, ``LoadCredential=`` hands the daemon a private copy of each
credential in ``$CREDENTIALS_DIRECTORY``. ``wsroute check`` and ``wsroute
test`` run from an operator's shell, where that variable is unset: they read
the same files from the folder the shipped drop-in loads them from
(:data:`DEFAULT_CREDENTIALS_DIR`), or from ``--credentials-dir``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import struct

__all__ = ["DEFAULT_CREDENTIALS_DIR", "looks_encrypted", "use_credentials_dir"]

#: Where systemd/credentials.conf loads the credentials from (``LoadCredential=``).
DEFAULT_CREDENTIALS_DIR = "/etc/wsroute/credentials"


def use_credentials_dir(explicit: str | None) -> str | None:
    """Point ``${credential:...}`` at ``explicit``, else keep ``$CREDENTIALS_DIRECTORY``
    (a check run by systemd itself), else use :data:`DEFAULT_CREDENTIALS_DIR` when it
    exists. Returns the folder in use, or None. For the short-lived CLI commands only."""
    chosen = explicit or os.environ.get("CREDENTIALS_DIRECTORY")
    if chosen is None and os.path.isdir(DEFAULT_CREDENTIALS_DIR):
        chosen = DEFAULT_CREDENTIALS_DIR
    if chosen is not None:
        os.environ["CREDENTIALS_DIRECTORY"] = chosen
    return chosen


def looks_encrypted(data: bytes) -> bool:
    """Whether ``data`` is a ``systemd-creds encrypt`` file, which only systemd can read.

    Such a file is Base64 (or raw) of a header: a 16-byte key-type id, then the
    little-endian sizes of the key, the cipher block (1), the IV (12) and the
    GCM tag (16) — checked by shape, so every key type (host, TPM2, null) is known.
    """
    raw = data
    with contextlib.suppress(binascii.Error, ValueError):
        raw = base64.b64decode(b"".join(data.split()), validate=True)
    if len(raw) < 32:
        return False
    _key_size, block_size, iv_size, tag_size = struct.unpack_from("<IIII", raw, 16)
    return (block_size, iv_size, tag_size) == (1, 12, 16)
