"""Strawberry types, inputs and payloads, one module per domain. `app.schema.schema`
composes the per-domain Query, Mutation and Subscription classes from `app.resolvers`."""
