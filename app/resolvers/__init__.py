"""GraphQL resolvers, one module per domain: authenticate, parse input, run one unit of
work through the services, and map domain errors to `UserError`s (in `base`)."""
