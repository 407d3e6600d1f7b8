"""Client for the tritonrag service: `RagClient` (blocking), `AsyncRagClient` (asyncio), `ask` CLI."""

from .aio import AsyncRagClient
from .client import RagClient
from .protocol import Answer, InvalidRequestError, RagError, Source

__all__ = ["AsyncRagClient", "Answer", "InvalidRequestError", "RagClient", "RagError", "Source"]
