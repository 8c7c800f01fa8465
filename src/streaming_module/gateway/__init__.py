"""The WebSocket gateway: aiohttp server, StreamingWebSocketGateway, auth, limits, CORS."""

from streaming_module.gateway.connection import ClientConnection
from streaming_module.gateway.gateway import StreamingWebSocketGateway
from streaming_module.gateway.server import serve

__all__ = ["ClientConnection", "StreamingWebSocketGateway", "serve"]
