"""Domain logic, free of GraphQL and HTTP: every function takes the session first and
keyword arguments after, never commits, and raises `app.errors.DomainError` on expected
failures. The same functions serve GraphQL, the CLI and background jobs."""
