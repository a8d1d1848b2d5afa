"""Relay's object identification: a `Node` interface whose `globalId` names its type.

The contract fixes every type's `id` (a row number, "12"), which is unique only within its
type; `globalId` is base64 of "Type:id" ("Event:12" -> "RXZlbnQ6MTI="), unique across the
schema, and `Query.node(id:)` takes it. Clients that normalise by id (Relay, Apollo, urql
Graphcache) key objects on `globalId`."""

from __future__ import annotations

import base64
import binascii

import strawberry


def to_global_id(type_name: str, local_id: str) -> str:
    return base64.b64encode(f"{type_name}:{local_id}".encode()).decode()


def from_global_id(global_id: str) -> tuple[str, str] | None:
    """(type name, id) of a global id; None for anything that is not one."""
    try:
        decoded = base64.b64decode(global_id.encode(), validate=True).decode()
    except (binascii.Error, UnicodeError):
        return None
    type_name, _, local_id = decoded.partition(":")
    return (type_name, local_id) if type_name and local_id else None


@strawberry.interface(description="An object Query.node can fetch again by its globalId.")
class Node:
    id: strawberry.ID

    @strawberry.field(description='Unique across types: base64 of "Type:id". Query.node takes it.')
    def global_id(self) -> strawberry.ID:
        return strawberry.ID(to_global_id(type(self).__name__, self.id))
