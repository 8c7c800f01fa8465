"""The WebSocket gateway: aiohttp server, StreamingWebSocketGateway, auth, limits, CORS."""
