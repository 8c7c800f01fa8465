"""The demo: the manual's AI content generation workflow with an offline, deterministic
streaming chat model, served with its page and HTTP API (``streaming-module demo``)."""

from streaming_module.demo.model import DemoChatModel, generate_text, iter_tokens

__all__ = ["DemoChatModel", "generate_text", "iter_tokens"]
