"""Sans-I/O wire protocols: pure functions and state machines, no asyncio, aiohttp or Redis."""
