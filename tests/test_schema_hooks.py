"""Extension hooks worked out once per class (app/schema/hooks.py) run as strawberry runs them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import strawberry
from strawberry.extensions import SchemaExtension

from app.schema.hooks import CachedHooksRunner


@strawberry.type
class Query:
    @strawberry.field
    def hello(self) -> str:
        return "hi"

    @strawberry.field
    def broken(self) -> str:
        raise ValueError("boom")


class Recording(SchemaExtension):
    """Every kind of hook: generator, async generator, plain function, and one left out."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def on_operation(self) -> Iterator[None]:
        self.log.append("operation starts")
        yield
        self.log.append(f"operation ends with {len(self.execution_context.result.errors or [])} errors")

    async def on_validate(self) -> AsyncIterator[None]:
        self.log.append("validate starts")
        yield
        self.log.append("validate ends")

    def on_parse(self) -> None:
        self.log.append("parse")

    def get_results(self) -> dict[str, Any]:
        return {"seen": len(self.log)}


class CachedHooksSchema(strawberry.Schema):
    def create_extensions_runner(self, execution_context: Any, extensions: list[SchemaExtension]) -> Any:
        return CachedHooksRunner(execution_context=execution_context, extensions=extensions)


@pytest.mark.parametrize("schema_class", [strawberry.Schema, CachedHooksSchema])  # the same, with or without
async def test_every_kind_of_hook_runs_in_order_with_its_own_extension_each_time(schema_class: type) -> None:
    logs: list[list[str]] = []

    def fresh() -> Recording:
        logs.append([])
        return Recording(logs[-1])

    schema = schema_class(query=Query, extensions=[fresh])
    for _ in range(2):  # the second operation uses what the first worked out
        result = await schema.execute("{ hello }")
        assert result.data == {"hello": "hi"} and result.extensions == {"seen": 5}
    failed = await schema.execute("{ broken }")
    assert failed.errors and failed.errors[0].message == "boom"
    expected = ["operation starts", "parse", "validate starts", "validate ends"]
    assert logs == [[*expected, "operation ends with 0 errors"]] * 2 + [[*expected, "operation ends with 1 errors"]]
