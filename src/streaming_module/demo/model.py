"""An offline, deterministic streaming chat model for the demo and for tests.

:class:`DemoChatModel` is a real LangChain chat model (a ``BaseChatModel``): ``ainvoke``,
``astream`` and LangGraph's ``messages`` stream mode all work, with no network and no keys. Its
answer depends only on the prompt (the last human message) and on ``words``: the same prompt always
gives the same text, a different prompt a different one.

Tokens look like a real model's: each is one word with the whitespace before it (``"Hello"``,
``" world."``, ``"\\n\\nThe"``), so a stream of ``words`` words is exactly ``words`` tokens, and
no token is only whitespace (a ``@stream_token`` filter with ``exclude_whitespace`` drops none).
Joining the tokens gives exactly the message ``ainvoke`` returns.

Long answers stream several words per chunk: up to :data:`MAX_CHUNKS` words a call streams one
word per chunk; beyond that, :func:`words_per_chunk` consecutive tokens are joined into one chunk
(500 for 1,000,000 words), so a call never streams many more than ``MAX_CHUNKS`` chunks. The text
is the same either way. Why: LangChain's ``BaseChatModel.astream`` keeps every chunk of a call
until the call ends and then merges them for its callbacks, ~2 KB per chunk with its message
object and metadata, so 1,000,000 one-word chunks held ~2 GB; 2,000 chunks hold ~4 MB, and
merging them and collecting them are short pauses of the event loop, not long ones.

Cost: generation is lazy (one word at a time), so a run of 1,000,000 words never holds more than
the text itself and the ``MAX_CHUNKS`` chunks LangChain keeps.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field

DEFAULT_WORDS = 300
MAX_WORDS = 1_000_000

MAX_CHUNKS = 2_000
"""A call streams one word per chunk up to this many words, and about this many chunks beyond."""

# How often a model with no delay hands control back to the event loop, in words: keeps a
# 1,000,000-word run from starving the server's other connections.
_YIELD_EVERY = 64


def words_per_chunk(words: int) -> int:
    """How many words one streamed chunk carries in a call of ``words`` words: 1 up to
    :data:`MAX_CHUNKS`, then ``ceil(words / MAX_CHUNKS)``."""
    return max(1, -(-words // MAX_CHUNKS))


def iter_chunks(prompt: str, words: int = DEFAULT_WORDS) -> Iterator[str]:
    """:func:`iter_tokens` grouped :func:`words_per_chunk` tokens at a time (the last chunk may
    be shorter); joining the chunks gives the same text."""
    size = words_per_chunk(words)
    if size == 1:
        yield from iter_tokens(prompt, words)
        return
    group: list[str] = []
    for token in iter_tokens(prompt, words):
        group.append(token)
        if len(group) == size:
            yield "".join(group)
            group.clear()
    if group:
        yield "".join(group)


_ADJECTIVES = (
    "adaptive", "careful", "clear", "concise", "curious", "deliberate", "durable", "elegant",
    "focused", "gentle", "layered", "lively", "measured", "modest", "nimble", "patient",
    "practical", "precise", "quiet", "resilient", "simple", "steady", "subtle", "thoughtful",
    "vivid", "warm",
)  # fmt: skip
_NOUNS = (
    "audience", "balance", "craft", "detail", "draft", "editor", "example", "feedback", "idea",
    "insight", "language", "message", "moment", "outline", "paragraph", "pattern", "perspective",
    "question", "reader", "rhythm", "story", "structure", "style", "theme", "tone", "voice",
    "writer",
)  # fmt: skip
_VERBS = (
    "builds", "clarifies", "connects", "invites", "frames", "guides", "highlights", "improves",
    "inspires", "reveals", "rewards", "sharpens", "shapes", "simplifies", "strengthens",
    "supports", "transforms",
)  # fmt: skip
_ADVERBS = (
    "always", "carefully", "clearly", "gradually", "naturally", "often", "quietly", "rarely",
    "steadily", "usually",
)  # fmt: skip
_OPENERS = (
    "In practice,", "Above all,", "At its best,", "Over time,", "For most readers,", "Even so,",
    "In the end,", "Put simply,", "More often than not,",
)  # fmt: skip
_STOPWORDS = frozenset(
    "a an and are as at be but by for from how in into is it its of on or that the this to was "
    "were what when where which who why will with write about please me my your you our we can "
    "could should would make makes making feel feels short long brief quick article essay post "
    "blog piece text paragraph paragraphs explain describe tell give using use good great new "
    "some more most very really just also".split()
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{2,}")


def prompt_topics(prompt: str) -> list[str]:
    """The prompt's content words (lower case, in order, without repeats), or a default topic."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(prompt):
        low = word.lower()
        if low not in _STOPWORDS:
            seen.setdefault(low, None)
    return list(seen)[:12] or ["writing"]


def _seed(prompt: str) -> int:
    return int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big")


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _sentence(rng: random.Random, topics: Sequence[str]) -> list[str]:
    topic = rng.choice(topics)
    adjective = rng.choice(_ADJECTIVES)
    shape = rng.randrange(5)
    if shape == 0:
        words = [
            _article(adjective), adjective, "approach", "to", topic, rng.choice(_VERBS), "the",
            rng.choice(_NOUNS), "and", rng.choice(_VERBS), "every", rng.choice(_NOUNS),
        ]  # fmt: skip
    elif shape == 1:
        words = [
            *rng.choice(_OPENERS).split(), "writing", "about", topic, rng.choice(_ADVERBS),
            rng.choice(_VERBS), _article(adjective), adjective, rng.choice(_NOUNS),
        ]  # fmt: skip
    elif shape == 2:
        words = [
            "Every", rng.choice(_NOUNS), "about", topic, "should", "feel", rng.choice(_ADJECTIVES),
            "and", rng.choice(_ADJECTIVES), "to", "the", rng.choice(_NOUNS),
        ]  # fmt: skip
    elif shape == 3:
        words = [
            "The", rng.choice(_NOUNS), "of", topic, rng.choice(_VERBS), "the",
            rng.choice(_ADJECTIVES), rng.choice(_NOUNS), "behind", "each", rng.choice(_NOUNS),
        ]  # fmt: skip
    else:
        words = [
            "When", "the", rng.choice(_NOUNS), "is", rng.choice(_ADJECTIVES) + ",", "a", "focus",
            "on", topic, rng.choice(_ADVERBS), rng.choice(_VERBS), "what", "the",
            rng.choice(_NOUNS), "needs",
        ]  # fmt: skip
    words[0] = words[0][:1].upper() + words[0][1:]
    return words


def iter_tokens(prompt: str, words: int = DEFAULT_WORDS) -> Iterator[str]:
    """The answer to ``prompt``, ``words`` tokens long, one word (with the whitespace before it)
    per token. Deterministic: a pure function of ``prompt`` and ``words``."""
    if words < 1:
        return
    rng = random.Random(_seed(prompt))
    topics = prompt_topics(prompt)
    emitted = 0
    sentences_in_paragraph = 0
    paragraph_length = rng.randint(4, 7)
    while emitted < words:
        sentence = _sentence(rng, topics)
        sentence[-1] += "."
        if sentences_in_paragraph == paragraph_length:
            separator = "\n\n"
            sentences_in_paragraph = 0
            paragraph_length = rng.randint(4, 7)
        else:
            separator = " "
        sentences_in_paragraph += 1
        for i, word in enumerate(sentence):
            if emitted == words - 1 and not word.endswith("."):
                word = word.rstrip(",") + "."
            if emitted == 0:
                yield word
            else:
                yield (separator if i == 0 else " ") + word
            emitted += 1
            if emitted == words:
                return


def generate_text(prompt: str, words: int = DEFAULT_WORDS) -> str:
    """The whole answer :func:`iter_tokens` streams, as one string."""
    return "".join(iter_tokens(prompt, words))


def _prompt_of(messages: Sequence[BaseMessage]) -> str:
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            return message.text if isinstance(message.text, str) else str(message.content)
    return messages[-1].text if messages else ""


class DemoChatModel(BaseChatModel):
    """A deterministic, offline chat model that streams a prompt-dependent answer.

    ``words`` is the answer's length (1 to 1,000,000; one word per streamed chunk up to
    :data:`MAX_CHUNKS` words, several beyond, see the module docstring) and can be overridden
    per call (``await model.ainvoke(prompt, words=40)``). ``token_delay_ms`` paces the stream,
    per chunk (0: as fast as possible, yet it still yields to the event loop every few dozen
    words).
    """

    words: int = Field(default=DEFAULT_WORDS, ge=1, le=MAX_WORDS)
    token_delay_ms: float = Field(default=0.0, ge=0)

    @property
    def _llm_type(self) -> str:
        return "streaming-module-demo"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"words": self.words, "token_delay_ms": self.token_delay_ms}

    def _length(self, kwargs: dict[str, Any]) -> int:
        words = kwargs.get("words")
        if words is None:
            return self.words
        if isinstance(words, bool) or not isinstance(words, int) or not 1 <= words <= MAX_WORDS:
            raise ValueError(f"words must be an integer from 1 to {MAX_WORDS}, got {words!r}")
        return words

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = generate_text(_prompt_of(messages), self._length(kwargs))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        import time

        delay = self.token_delay_ms / 1000
        for token in iter_chunks(_prompt_of(messages), self._length(kwargs)):
            if delay:
                time.sleep(delay)
            yield ChatGenerationChunk(message=AIMessageChunk(content=token))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        delay = self.token_delay_ms / 1000
        words = self._length(kwargs)
        yield_every = max(1, _YIELD_EVERY // words_per_chunk(words))  # in chunks
        for n, token in enumerate(iter_chunks(_prompt_of(messages), words)):
            if delay:
                await asyncio.sleep(delay)
            elif n % yield_every == yield_every - 1:
                await asyncio.sleep(0)
            yield ChatGenerationChunk(message=AIMessageChunk(content=token))


__all__ = [
    "DEFAULT_WORDS",
    "MAX_CHUNKS",
    "MAX_WORDS",
    "DemoChatModel",
    "generate_text",
    "iter_chunks",
    "iter_tokens",
    "words_per_chunk",
]
