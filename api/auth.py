"""Bearer-token check for every HTTP request and websocket of the API (BOOKFEED_API_TOKEN), as plain ASGI
middleware so streamed responses pass through untouched. The token comes in `Authorization: Bearer <token>` or,
where a client cannot set headers (a browser's WebSocket, a link to the page), the `access_token` query parameter
(RFC 6750 section 2.3)."""

from __future__ import annotations

import hmac
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from api.problems import problem_response

__all__ = ["BearerAuth"]

WS_POLICY_VIOLATION = 1008


class BearerAuth:
    def __init__(self, app: ASGIApp, *, token: str) -> None:
        self._app = app
        self._token = token.encode()

    def _presented(self, scope: Scope) -> bytes | None:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, credential = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    return bytes(credential).strip()
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        values = query.get("access_token")
        return values[0].encode("latin-1") if values else None

    def _allowed(self, scope: Scope) -> bool:
        presented = self._presented(scope)
        return presented is not None and hmac.compare_digest(presented, self._token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._allowed(scope):
            await self._app(scope, receive, send)
        elif scope["type"] == "http":
            response = problem_response(
                401,
                "Unauthorized",
                "this API needs its token: Authorization: Bearer <BOOKFEED_API_TOKEN>",
                instance=str(scope.get("path", "")),
                headers={"WWW-Authenticate": 'Bearer realm="bookfeed"'},
            )
            await response(scope, receive, send)
        else:
            await receive()  # websocket.connect; closing before accepting answers the handshake with 403
            await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION})
