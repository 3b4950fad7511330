"""A static <title> in the page's HTML.

Gradio's index template leaves <title> to its scripts (from `gr.Blocks(title=...)`), so a
tab before the scripts run, a bookmark and a link preview saw no title. This ASGI
middleware writes it into the HTML that GET / serves; everything else passes untouched.
"""

from __future__ import annotations

import html
from typing import Any

TITLE = "Activation Studio"


class StaticTitle:
    """ASGI middleware: insert <title> after <head> in the HTML page served at '/'."""

    def __init__(self, app: Any, title: str = TITLE) -> None:
        self.app = app
        self.tag = f"<title>{html.escape(title)}</title>".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "GET" or scope.get("path") != "/":
            await self.app(scope, receive, send)
            return
        start: dict | None = None
        parts: list[bytes] = []

        async def titled(message: dict) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message  # held back: the body's length changes
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            parts.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = self._with_title(start, b"".join(parts))
            headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, titled)

    def _with_title(self, start: dict, body: bytes) -> bytes:
        headers = dict(start.get("headers", []))
        if not headers.get(b"content-type", b"").startswith(b"text/html") or \
                b"content-encoding" in headers or b"<title" in body[:4096]:
            return body  # not the page, compressed, or titled already
        return body.replace(b"<head>", b"<head>\n\t\t" + self.tag, 1)
