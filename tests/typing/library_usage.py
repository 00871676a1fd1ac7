"""The library face as a program uses it, checked by ``mypy --strict`` (``make typecheck``).

Not run: it only has to type-check against the public names.
"""

from __future__ import annotations

import wsroute
import wsroute.sync


async def receive_one(url: str) -> wsroute.Message | None:
    async with wsroute.connect(
        url,
        codec="struct",
        codec_options={"header": "<i", "fields": ["opcode"], "key": "opcode"},
        on_connect=[{"json": {"role": "admin", "user_id": "u"}}],
        on_close=[{"struct": ("<ib", [0, 0])}],
        ping_interval=5,
        queue=100,
    ) as conn:
        await conn.send(struct=("<i", [2]), json=["first", "test"])
        await conn.subscribe("news", json={"op": "news"})
        conn.unsubscribe("news")
        state: wsroute.ConnectionState = conn.state
        assert state is not None
        async for message in conn:
            return message
        return await conn.receive()


def receive_one_blocking(url: str) -> wsroute.Message | None:
    options: type[wsroute.ClientOptions] = wsroute.ClientOptions
    assert options is not None
    client: wsroute.Client = wsroute.connect(url, codec=wsroute.JsonCodec())
    assert client.options.url == url
    with wsroute.sync.connect(url, ready_timeout=5) as conn:
        conn.send(text="hello")
        for message in conn:
            return message
        return conn.receive(timeout=1.0)


def keywords_are_checked(url: str) -> None:
    # Each ignore must stay needed: an unchecked keyword would make mypy report it unused.
    wsroute.connect(url, ping_intervl=5)  # type: ignore[call-arg]
    wsroute.connect(url, queue="many")  # type: ignore[arg-type]
    wsroute.sync.connect(url, compression="zip")  # type: ignore[arg-type]
    options: wsroute.ConnectOptions = {"ping_interval": "5s", "reconnect": {"initial": 0.5}}
    wsroute.connect(url, **options)
