"""The GraphQL schema: per-domain Query, Mutation and Subscription classes composed into one,
with the document limits and the error masking every operation goes through."""

from __future__ import annotations

from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import MaskErrors, MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter
from strawberry.tools import merge_types

from app.errors import DomainError
from app.resolvers.accounts import AccountMutation, AccountQuery
from app.resolvers.bookings import BookingMutation, BookingQuery
from app.resolvers.catalogue import CatalogueMutation, CatalogueQuery
from app.resolvers.realtime import RealtimeSubscription
from app.resolvers.waitlist import WaitlistMutation, WaitlistQuery
from app.settings import Settings

MAX_TOKENS = 5000  # refuses absurd documents before they are even validated

Query = merge_types("Query", (AccountQuery, CatalogueQuery, BookingQuery, WaitlistQuery))
Mutation = merge_types("Mutation", (AccountMutation, CatalogueMutation, BookingMutation, WaitlistMutation))
Subscription = merge_types("Subscription", (RealtimeSubscription,))


class ErrorMasking(MaskErrors):
    """Top-level errors: GraphQL's own (malformed documents) pass as they are; a DomainError
    raised by a query or subscription keeps its safe message and gets its code; anything
    else is a server fault, logged by strawberry and shown only as a generic message."""

    def __init__(self) -> None:
        super().__init__(should_mask_error=self._unexpected, error_message="Internal server error")

    @staticmethod
    def _unexpected(error: GraphQLError) -> bool:
        original = error.original_error
        return original is not None and not isinstance(original, (DomainError, GraphQLError))

    def _process_errors(self, errors: list[GraphQLError]) -> list[GraphQLError]:
        for error in errors:
            if isinstance(error.original_error, DomainError):
                error.extensions = {**(error.extensions or {}), "code": error.original_error.code.value}
        return super()._process_errors(errors)


def create_schema(settings: Settings) -> strawberry.Schema:
    # Factories: strawberry builds fresh extensions for every operation.
    extensions: list[Any] = [
        lambda: QueryDepthLimiter(max_depth=settings.max_query_depth),
        lambda: MaxAliasesLimiter(max_alias_count=settings.max_aliases),
        lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
        ErrorMasking,
    ]
    return strawberry.Schema(query=Query, mutation=Mutation, subscription=Subscription,
                             extensions=extensions)
