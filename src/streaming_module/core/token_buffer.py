"""One token stream's pure logic: filter, processor, buffer, batching and payload format.

No asyncio, no reactivex, no clock: :class:`TokenBuffer` takes tokens with
:meth:`~TokenBuffer.offer` and hands back ready-to-send batches with :meth:`~TokenBuffer.drain`.
*When* to drain (buffer full, flush interval elapsed, explicit flush, close) is decided by the
service around it, which also stamps each batch with a time and sends it.

Per token, in this order:

1. the ``filter`` sees the token exactly as it arrived; a token failing any rule is dropped and
   counted in ``tokens_dropped`` (rules: ``min_length``/``max_length`` on ``len(token)``,
   ``exclude_whitespace`` drops tokens that are empty or only whitespace, ``pattern`` keeps
   tokens where ``pattern.search(token)`` matches). A stream whose config has ``enabled=False``
   drops every token the same way;
2. the ``processor(token, metadata)`` rewrites a token that passed (it must return a ``str``);
3. the token is appended to the buffer (with its metadata, when the format or
   ``include_metadata`` needs it).

Payload format — a drain cuts the buffered tokens, in arrival order, into batches of
``batch_size`` tokens (``None``: one batch with everything buffered; 25 tokens with
``batch_size=10`` give batches of 10, 10 and 5). Each batch becomes one :class:`TokenBatch`:

``format='text'``
    ``TokenData(content=<the batch's tokens joined with no separator>, index=<0-based index of
    the batch's first token among the tokens this stream has emitted>, total_tokens=<tokens this
    stream has emitted up to and including this batch>)``; ``role`` and ``tokens`` are ``None``.
``format='json'``
    as ``text``, plus ``tokens`` = the list of the batch's tokens.
``format='structured'``
    as ``json``, plus ``role='assistant'``; the update's metadata gets an extra
    ``token_metadata``: a list parallel to ``tokens`` holding each token's metadata dict
    (``{}`` for a token streamed without metadata).

``content`` is always the joined text of the batch, whatever the format: it is what the wire
protocol sends. With ``include_metadata=True`` the batch's token metadata dicts are merged, in
token order (a later token's value wins), into the update metadata's extras; keys that name
:class:`~streaming_module.types.StreamMetadata`'s own fields
(:data:`~streaming_module.types.RESERVED_METADATA_KEYS`) are left out so they cannot overwrite
them, and under ``structured`` the ``token_metadata`` list wins over a same-named key.
Numbering the updates is the service's (``StreamMetadata.sequence_number``), not the buffer's.

Cost: :meth:`TokenBuffer.offer` is a few attribute reads, the filter's comparisons and one or two
``list.append``; nothing is allocated per token beyond the list slot. :meth:`TokenBuffer.drain`
allocates one ``TokenData`` (and one joined string) per batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streaming_module.config import StreamTokenOptions, TokenFilterOptions, TokenProcessor
from streaming_module.types import RESERVED_METADATA_KEYS, TokenData, TokenFormat

TokenPredicate = Callable[[str], bool]


@dataclass(slots=True)
class TokenCounters:
    """What a stream (or the whole service) has done with its tokens.

    ``tokens_in``: tokens given to ``stream_token``; ``tokens_dropped``: of those, removed by the
    filter (or because the stream is disabled); ``tokens_out``: tokens emitted to subscribers;
    ``updates_emitted``: updates (batches) emitted; ``flushes``: drains that emitted something.
    ``tokens_in - tokens_dropped - tokens_out`` is what sits in the buffer.
    """

    tokens_in: int = 0
    tokens_out: int = 0
    tokens_dropped: int = 0
    updates_emitted: int = 0
    flushes: int = 0

    def add(self, other: TokenCounters) -> None:
        """Add ``other``'s counts to these (used to keep totals of closed streams)."""
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.tokens_dropped += other.tokens_dropped
        self.updates_emitted += other.updates_emitted
        self.flushes += other.flushes


@dataclass(slots=True)
class TokenBatch:
    """One update's worth of tokens: its payload, and the extra metadata fields it carries
    (``None`` when there are none)."""

    data: TokenData
    extra: dict[str, Any] | None
    token_count: int


def compile_filter(options: TokenFilterOptions | None) -> TokenPredicate | None:
    """A predicate ``token -> keep?`` for ``options``, or ``None`` when it keeps everything.

    The predicate tests only the rules that are set, cheapest first.
    """
    if options is None:
        return None
    min_length = options.min_length or 0
    max_length = options.max_length
    exclude_whitespace = options.exclude_whitespace
    search = options.pattern.search if options.pattern is not None else None
    if min_length == 0 and max_length is None and not exclude_whitespace and search is None:
        return None

    # The common manual case (length bounds and/or whitespace, no regex) gets a tight function.
    if search is None:
        upper = max_length if max_length is not None else -1

        def keep_plain(token: str) -> bool:
            n = len(token)
            if n < min_length or (upper >= 0 and n > upper):
                return False
            return not (exclude_whitespace and (n == 0 or token.isspace()))

        return keep_plain

    def keep(token: str) -> bool:
        n = len(token)
        if n < min_length or (max_length is not None and n > max_length):
            return False
        if exclude_whitespace and (n == 0 or token.isspace()):
            return False
        return search(token) is not None

    return keep


def _drop_all(token: str) -> bool:
    return False


class TokenBuffer:
    """Buffer, filter, processor and batcher of one token stream (see the module docstring).

    Not thread-safe: one stream is fed from one thread (the event loop's).
    Memory: at most what is offered between two drains (the service drains at ``buffer_size``).
    """

    __slots__ = (
        "_accept",
        "_keep_metadata",
        "_next_index",
        "_processor",
        "batch_size",
        "buffer_size",
        "flushes",
        "format",
        "include_metadata",
        "metadata",
        "tokens",
        "tokens_dropped",
        "tokens_in",
        "tokens_out",
        "updates_emitted",
        "uses_metadata",
    )

    def __init__(self, config: StreamTokenOptions, *, default_buffer_size: int = 50) -> None:
        self.tokens: list[str] = []
        self.metadata: list[dict[str, Any] | None] = []
        self.tokens_in = 0
        self.tokens_out = 0
        self.tokens_dropped = 0
        self.updates_emitted = 0
        self.flushes = 0
        self._next_index = 0
        self.buffer_size = default_buffer_size
        self.batch_size: int | None = None
        self.format: TokenFormat = "text"
        self.include_metadata = False
        self._accept: TokenPredicate | None = None
        self._processor: TokenProcessor | None = None
        self._keep_metadata = False
        self.uses_metadata = False
        """Whether token metadata matters (processor, ``include_metadata``, ``structured``);
        when not, a caller may skip preparing it."""
        self.configure(config, default_buffer_size=default_buffer_size)

    def configure(self, config: StreamTokenOptions, *, default_buffer_size: int = 50) -> None:
        """Apply ``config`` to tokens offered from now on. Counters, token index and sequence
        numbers carry on. Call it on an empty buffer (drain first) so buffered tokens are not
        re-shaped by the new format."""
        self.buffer_size = (
            config.buffer_size if config.buffer_size is not None else default_buffer_size
        )
        self.batch_size = config.batch_size
        self.format = config.format
        self.include_metadata = config.include_metadata
        self._accept = compile_filter(config.filter) if config.enabled else _drop_all
        self._processor = config.processor
        self._keep_metadata = config.include_metadata or config.format == "structured"
        self.uses_metadata = self._keep_metadata or config.processor is not None

    @property
    def pending(self) -> int:
        """Tokens buffered, waiting for a drain."""
        return len(self.tokens)

    def offer(self, token: str, metadata: dict[str, Any] | None = None) -> int:
        """Filter, process and buffer one token. Returns how many tokens are buffered now, or 0
        when the token was dropped by the filter. Exceptions from the processor propagate (the
        token is then neither buffered nor counted as dropped); a processor returning something
        other than a ``str`` raises ``TypeError``."""
        self.tokens_in += 1
        accept = self._accept
        if accept is not None and not accept(token):
            self.tokens_dropped += 1
            return 0
        processor = self._processor
        if processor is not None:
            token = processor(token, metadata)
            if not isinstance(token, str):
                raise TypeError(
                    f"the token processor must return a str, got {type(token).__name__}"
                )
        tokens = self.tokens
        tokens.append(token)
        if self._keep_metadata:
            self.metadata.append(metadata)
        return len(tokens)

    def drain(self) -> list[TokenBatch]:
        """Take everything buffered, as batches in arrival order (empty list when nothing is
        buffered). Advances the token index and the counters."""
        tokens = self.tokens
        if not tokens:
            return []
        metadata = self.metadata if self._keep_metadata else None
        self.tokens = []
        if metadata is not None:
            self.metadata = []
        total = len(tokens)
        size = self.batch_size if self.batch_size is not None and self.batch_size < total else 0
        fmt = self.format
        batches: list[TokenBatch] = []
        start = 0
        while start < total:
            if size:
                chunk = tokens[start : start + size]
                metas = metadata[start : start + size] if metadata is not None else None
            else:
                chunk = tokens
                metas = metadata
            count = len(chunk)
            index = self._next_index
            self._next_index = index + count
            data = TokenData("".join(chunk), None, index, index + count)
            if fmt != "text":
                # ``chunk`` is a fresh slice or the list just detached from the buffer.
                data.tokens = chunk
                if fmt == "structured":
                    data.role = "assistant"
            extra = self._extra(metas) if metas is not None else None
            batches.append(TokenBatch(data, extra, count))
            start += count
        self.tokens_out += total
        self.updates_emitted += len(batches)
        self.flushes += 1
        return batches

    def _extra(self, metas: list[dict[str, Any] | None]) -> dict[str, Any] | None:
        extra: dict[str, Any] = {}
        if self.include_metadata:
            for meta in metas:
                if meta:
                    extra.update(meta)
            for key in RESERVED_METADATA_KEYS.intersection(extra):
                del extra[key]
        if self.format == "structured":
            extra["token_metadata"] = [dict(meta) if meta else {} for meta in metas]
        return extra or None

    def counters(self) -> TokenCounters:
        """A snapshot of this stream's counters."""
        return TokenCounters(
            self.tokens_in, self.tokens_out, self.tokens_dropped, self.updates_emitted, self.flushes
        )


__all__ = [
    "TokenBatch",
    "TokenBuffer",
    "TokenCounters",
    "TokenPredicate",
    "compile_filter",
]
