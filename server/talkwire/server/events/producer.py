"""A Kafka producer that connects on first use, for ingress paths that forward to Kafka.

The server must start (and serve chat) while the broker is down, so a producer
that only some requests need is not started with the application: the first
``send_and_wait`` starts it, a failed start is retried by the next call, and
``aclose`` stops it if it ever started.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from aiokafka import AIOKafkaProducer

__all__ = ["LazyProducer"]


class LazyProducer:
    """``send_and_wait`` like :class:`aiokafka.AIOKafkaProducer`; started on first use."""

    def __init__(self, client_kwargs: Mapping[str, Any]) -> None:
        self._kwargs = dict(client_kwargs)
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _started(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._closed:
                raise RuntimeError("producer closed")
            if self._producer is None:
                producer = AIOKafkaProducer(acks="all", **self._kwargs)
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def send_and_wait(
        self,
        topic: str,
        *,
        value: bytes,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> Any:
        """Produce one record and wait for the broker's acknowledgement."""
        producer = await self._started()
        return await producer.send_and_wait(topic, value=value, key=key, headers=list(headers))

    async def aclose(self) -> None:
        """Stop the producer if it started (idempotent)."""
        async with self._lock:
            self._closed = True
            producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
