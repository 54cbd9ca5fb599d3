"""Drives Gatehouse with the official MCP Python SDK, the way an application would.

Usage: python oauth_client.py <mcp-url>

The SDK's OAuthClientProvider runs the whole flow: discovery, dynamic registration,
PKCE, the authorization request, the code exchange. This script only supplies what an
application supplies: where to send the person (printed as a JSON line for the test's
browser to follow) and a local callback server that receives the code. When done it
prints one JSON line with the tools it listed and the result of a tool call.
"""

import asyncio
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlparse

import httpx2
from mcp.client.auth import OAuthClientProvider, TokenStorage
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken


class MemoryStorage(TokenStorage):
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


class Callback:
    """A one-shot HTTP server for the authorization redirect."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.result: asyncio.Future[dict[str, str]] = self.loop.create_future()
        callback = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                query = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.end_headers()
                self.wfile.write(b"<!doctype html><title>callback</title><p>Callback received</p>")
                callback.loop.call_soon_threadsafe(
                    lambda: callback.result.done() or callback.result.set_result(query)
                )

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/callback"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    async def wait(self) -> AuthorizationCodeResult:
        query = await self.result
        if "code" not in query:
            raise RuntimeError(f"authorization failed: {query}")
        return AuthorizationCodeResult(code=query["code"], state=query.get("state"), iss=query.get("iss"))


async def main(url: str) -> None:
    callback = Callback()

    async def redirect(authorization_url: str) -> None:
        emit(authorize=authorization_url)

    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="MCP Python SDK end-to-end test",
            redirect_uris=[callback.url],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=MemoryStorage(),
        redirect_handler=redirect,
        callback_handler=callback.wait,
    )
    async with httpx2.AsyncClient(auth=provider, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            tools = await client.list_tools()
            result = await client.call_tool("list_articles", {})
            emit(
                tools=[tool.name for tool in tools.tools],
                is_error=bool(result.is_error),
                structured=result.structured_content,
            )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
