"""The wire protocols, Sans-I/O: plain values in, plain values and bytes out; no asyncio, no
aiohttp, no Redis. The gateway, the brokers and the client are adapters around these modules.

- :mod:`~streaming_module.protocol.close_codes`: ``CloseCode`` and the ``RESUMABLE`` ones;
- :mod:`~streaming_module.protocol.json`: ``dumps``/``loads`` (orjson) and ``json_default``;
- :mod:`~streaming_module.protocol.frames`: THE ``Frame`` (server → client), the type names,
  replies (``encode_reply``, ``encode_error``);
- :mod:`~streaming_module.protocol.messages`: client → server messages, their decoding and the
  builders a client encodes them with;
- :mod:`~streaming_module.protocol.updates`: ``frame_from_update``, what a service's update is on
  the wire;
- :mod:`~streaming_module.protocol.coalesce`: merging consecutive token frames;
- :mod:`~streaming_module.protocol.sse`, :mod:`~streaming_module.protocol.agui`,
  :mod:`~streaming_module.protocol.aisdk`: our frames as native SSE, AG-UI events and AI SDK UI
  message stream parts.

Import from the module itself; this package imports nothing, so that
``streaming_module.errors`` can use the close codes without a cycle.
"""
