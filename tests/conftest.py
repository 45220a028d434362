from __future__ import annotations

import json
from typing import Any

import pytest
import trio.testing


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param("trio", id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on asyncio and on trio."""
    return str(request.param)


@pytest.fixture
def mock_clock_backend() -> tuple[str, dict[str, Any]]:
    """trio with a virtual clock that jumps ahead whenever every task waits."""
    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})


class RecordingSink:
    """A sink that records what it is sent, in order."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.closed: tuple[int, str] | None = None

    async def send(self, text: str) -> None:
        self.texts.append(text)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    @property
    def frames(self) -> list[dict[str, Any]]:
        return [json.loads(text) for text in self.texts]

    def of_type(self, *types: str) -> list[dict[str, Any]]:
        return [frame for frame in self.frames if frame["type"] in types]

    def session_frames(self, session_id: str) -> list[dict[str, Any]]:
        return [frame for frame in self.frames if frame.get("sessionId") == session_id]
