"""Automatic persisted queries (Apollo's APQ): a client sends the SHA-256 of its document in
`extensions.persistedQuery` instead of the text, and the text only when we do not know it
yet. Documents are kept in Redis when there is one (shared by every instance, each key with
a TTL) or in a bounded in-process LRU; either may forget, and the client then sends the text
again. A hash-only query fits in a GET URL, so CDNs can cache catalogue reads.

`PERSISTED_QUERIES=only` turns the store into an allow-list: the documents of a manifest
(Apollo's persisted query manifest) run, nothing else does, whatever the transport."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from cross_web import HTTPException
from graphql import GraphQLError
from redis import asyncio as aioredis
from redis.exceptions import RedisError
from strawberry.extensions import SchemaExtension

from app.settings import ConfigurationError, Settings

logger = logging.getLogger(__name__)

MODES = ("on", "off", "only")
# Longer documents are still run when sent, just not kept: nothing a client ships is this
# long, and the cap bounds what one key can hold.
MAX_DOCUMENT_CHARS = 32 * 1024
MEMORY_ENTRIES = 1000
HEX_SHA256 = re.compile("[0-9a-fA-F]{64}")


class PersistedQueryError(Exception):
    """Answered as a GraphQL error with the message and code Apollo's clients look for."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def sha256(document: str) -> str:
    return hashlib.sha256(document.encode()).hexdigest()


class Store(Protocol):
    async def get(self, digest: str) -> str | None: ...

    async def put(self, digest: str, document: str) -> None: ...


class MemoryStore:
    """The most recently used documents of this process."""

    def __init__(self, entries: int = MEMORY_ENTRIES) -> None:
        self.entries = entries
        self._documents: OrderedDict[str, str] = OrderedDict()

    async def get(self, digest: str) -> str | None:
        document = self._documents.get(digest)
        if document is not None:
            self._documents.move_to_end(digest)
        return document

    async def put(self, digest: str, document: str) -> None:
        self._documents[digest] = document
        self._documents.move_to_end(digest)
        while len(self._documents) > self.entries:
            self._documents.popitem(last=False)


class RedisStore:
    """Shared by every instance. Redis may be down: then nothing is known, and the client
    sends the text again (a lookup never fails a request)."""

    def __init__(self, client: aioredis.Redis, *, prefix: str, ttl_seconds: int) -> None:
        self.client = client
        self.prefix = f"{prefix}apq:"
        self.ttl_seconds = ttl_seconds

    async def get(self, digest: str) -> str | None:
        try:
            found = await self.client.get(self.prefix + digest)
        except RedisError as error:
            logger.warning("Persisted query lookup failed: %s", error)
            return None
        return found.decode() if isinstance(found, bytes) else found

    async def put(self, digest: str, document: str) -> None:
        try:
            await self.client.set(self.prefix + digest, document, ex=self.ttl_seconds)
        except RedisError as error:
            logger.warning("Persisted query not stored: %s", error)


class Manifest:
    """The allow-list: documents by hash, read once at startup."""

    def __init__(self, documents: Mapping[str, str]) -> None:
        self.documents = dict(documents)

    @classmethod
    def load(cls, path: str) -> Manifest:
        """Apollo's format: {"format": "apollo-persisted-query-manifest", "operations": [{"id", "body"}]}."""
        try:
            operations = json.loads(Path(path).read_text())["operations"]
            documents = {sha256(operation["body"]): operation["body"] for operation in operations}
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigurationError(f"PERSISTED_QUERIES_MANIFEST={path!r} is not a readable manifest: {error}") \
                from None
        return cls(documents)

    async def get(self, digest: str) -> str | None:
        return self.documents.get(digest)

    async def put(self, digest: str, document: str) -> None:
        raise AssertionError("the allow-list is read-only")  # `only` mode never registers


class PersistedQueries:
    def __init__(self, mode: str, store: Store) -> None:
        self.mode = mode
        self.store = store

    @classmethod
    def from_settings(cls, settings: Settings, redis_client: aioredis.Redis | None) -> PersistedQueries:
        mode = settings.persisted_queries
        if mode not in MODES:
            raise ConfigurationError(f"PERSISTED_QUERIES must be one of {', '.join(MODES)}, not {mode!r}")
        if mode == "only":
            if not settings.persisted_queries_manifest:
                raise ConfigurationError("PERSISTED_QUERIES=only needs PERSISTED_QUERIES_MANIFEST")
            return cls(mode, Manifest.load(settings.persisted_queries_manifest))
        store: Store = (RedisStore(redis_client, prefix=settings.redis_prefix,
                                   ttl_seconds=settings.persisted_query_ttl_seconds)
                        if redis_client is not None else MemoryStore())
        return cls(mode, store)

    async def document(self, query: str | None, extensions: Mapping[str, Any] | None) -> str | None:
        """The document to run for a request's `query` and `extensions`."""
        persisted = (extensions or {}).get("persistedQuery")
        if persisted is None:
            return query  # `only` mode checks plain text in AllowListed, on every transport
        if self.mode == "off":
            raise PersistedQueryError("PersistedQueryNotSupported", "PERSISTED_QUERY_NOT_SUPPORTED")
        if not isinstance(persisted, dict) or persisted.get("version") != 1:
            raise HTTPException(400, "extensions.persistedQuery must be {version: 1, sha256Hash}")
        digest = persisted.get("sha256Hash")
        if not isinstance(digest, str) or not HEX_SHA256.fullmatch(digest):
            raise HTTPException(400, "persistedQuery.sha256Hash must be a SHA-256 in hex")
        digest = digest.lower()
        if query is None:
            found = await self.store.get(digest)
            if found is None:
                if self.mode == "only":
                    raise PersistedQueryError("PersistedQueryNotInList", "PERSISTED_QUERY_NOT_IN_LIST")
                raise PersistedQueryError("PersistedQueryNotFound", "PERSISTED_QUERY_NOT_FOUND")
            return found
        if sha256(query) != digest:
            raise HTTPException(400, "provided sha does not match query")  # Apollo Server's words
        if self.mode == "on" and len(query) <= MAX_DOCUMENT_CHARS:
            await self.store.put(digest, query)
        return query


class AllowListed(SchemaExtension):
    """`only` mode: a document outside the manifest does not run, whichever transport brought it."""

    def __init__(self, *, manifest: Manifest) -> None:
        self.manifest = manifest

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        if context.query is not None and sha256(context.query) not in self.manifest.documents:
            # Set before validation runs: strawberry then skips it and answers with these.
            context.pre_execution_errors = [GraphQLError(
                "PersistedQueryNotInList", extensions={"code": "PERSISTED_QUERY_NOT_IN_LIST"})]
        yield
