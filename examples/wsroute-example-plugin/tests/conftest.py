import pytest


@pytest.fixture
def anyio_backend() -> str:
    # wsroute runs on asyncio.
    return "asyncio"
