"""`WS /v1/live?symbols=`: each newly stored book's metrics, pushed after its batch is committed. Workers publish
every committed batch on one Redis pub/sub channel (workers/live.py, models.live); each websocket has its own
subscription and forwards the items of its symbols. Redis drops a subscriber that falls too far behind
(client-output-buffer-limit pubsub), which closes that websocket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Annotated, Any

import orjson
import redis.asyncio as aioredis
from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect
from redis.exceptions import RedisError

from api.context import ApiContext
from api.params import parse_symbol
from api.problems import ProblemError

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter()

WS_POLICY_VIOLATION, WS_INTERNAL_ERROR, WS_TRY_AGAIN_LATER = 1008, 1011, 1013


def _wanted(symbols: str | None) -> frozenset[str] | None:
    if not symbols:
        return None
    return frozenset(parse_symbol(s) for s in symbols.split(",") if s.strip()) or None


async def _forward(websocket: WebSocket, pubsub: Any, wanted: frozenset[str] | None) -> None:
    async for message in pubsub.listen():
        if message.get("type") != "message":
            continue
        for item in orjson.loads(message["data"]):
            if wanted is None or item.get("symbol") in wanted:
                await websocket.send_text(orjson.dumps(item).decode())


async def _until_closed(websocket: WebSocket) -> None:
    # Clients send nothing (anything they send is ignored); this notices when they leave.
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


@router.websocket("/v1/live")
async def live(
    websocket: WebSocket,
    symbols: Annotated[str | None, Query(description="comma-separated; default every symbol")] = None,
) -> None:
    """First `{"subscribed": [symbols] | "all"}`, then one JSON text message per stored book of those symbols:
    `{exchange, symbol, received_at, last_update_id, depth, best_bid, best_ask, spread, bid_vwap, ask_vwap, price,
    crossed}`."""
    await websocket.accept()
    ctx = websocket.app.state.ctx
    assert isinstance(ctx, ApiContext)
    try:
        wanted = _wanted(symbols)
    except ProblemError as exc:
        await websocket.close(WS_POLICY_VIOLATION, exc.detail[:120])
        return
    if ctx.redis_url is None:
        await websocket.close(WS_INTERNAL_ERROR, "live push needs REDIS_URL")
        return
    client = aioredis.Redis.from_url(ctx.redis_url)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(ctx.live_channel)
        await websocket.send_text(orjson.dumps({"subscribed": sorted(wanted) if wanted else "all"}).decode())
        tasks = [
            asyncio.create_task(_forward(websocket, pubsub, wanted)),
            asyncio.create_task(_until_closed(websocket)),
        ]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in done:
            task.result()  # a forwarding error surfaces here
    except RedisError as exc:
        logger.warning("live push: Redis failed (%s); closing the websocket", exc)
        with contextlib.suppress(Exception):
            await websocket.close(WS_TRY_AGAIN_LATER, "live push unavailable")
    except WebSocketDisconnect:
        pass
    finally:
        with contextlib.suppress(RedisError):
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()
