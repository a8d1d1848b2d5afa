"""The `bookmyevent` command: serve, migrate, seed-demo, create-admin, create-staff, ticket keys, schema."""

from __future__ import annotations

import argparse
import asyncio
import logging.config
import os
import shutil
import sys
import tempfile
from pathlib import Path

from app.logs import logging_config
from app.settings import ConfigurationError, Settings, load_settings

# Inside the package, so an installed wheel migrates from any directory.
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MAX_WEBSOCKET_FRAME = 64 * 1024  # subscribe messages are small; refuse anything larger


def migrate(settings: Settings) -> None:
    """Bring the database schema to the newest migration (alembic owns the schema)."""
    from alembic import command
    from alembic.config import Config

    config = Config()  # no alembic.ini needed: it is for developers making new revisions
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    config.attributes["database_url"] = settings.database_url
    config.attributes["configure_logging"] = False
    command.upgrade(config, "head")


async def _with_session(settings: Settings, work):  # type: ignore[no-untyped-def]
    from app.db import create_engine, create_sessionmaker

    engine = create_engine(settings)
    try:
        async with create_sessionmaker(engine)() as session:
            result = await work(session)
            await session.commit()
            return result
    finally:
        await engine.dispose()


def seed_demo(settings: Settings) -> bool:
    from app.services.demo import seed_demo as seed

    return asyncio.run(_with_session(settings, seed))


def create_account(settings: Settings, email: str, password: str, name: str, role: str) -> None:
    from app.services.accounts import create_user

    asyncio.run(_with_session(settings, lambda session: create_user(
        session, email=email, password=password, name=name, role=role, settings=settings)))


def rotate_ticket_key(settings: Settings) -> str:
    from app.services.tickets import rotate_key

    async def work(session):  # type: ignore[no-untyped-def]
        return (await rotate_key(session, secret=settings.ticket_key_secret)).kid
    return str(asyncio.run(_with_session(settings, work)))


def retire_ticket_key(settings: Settings, kid: str) -> None:
    from app.services.tickets import retire_key

    asyncio.run(_with_session(settings, lambda session: retire_key(session, kid=kid)))


def share_metrics_between_workers(port: int) -> None:
    """Give the workers one directory for their metrics (app/metrics.py), empty at start as
    prometheus_client requires. An operator's own PROMETHEUS_MULTIPROC_DIR is used if set."""
    directory = Path(os.environ.setdefault(
        "PROMETHEUS_MULTIPROC_DIR", str(Path(tempfile.gettempdir()) / f"bookmyevent-metrics-{port}")))
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)


def serve(settings: Settings) -> None:
    import uvicorn

    import app.workers

    settings.check()
    migrate(settings)
    workers = settings.workers
    if not settings.production:
        if seed_demo(settings):
            print("Seeded demo venues and events.", file=sys.stderr)
        if workers > 1:  # in-process pub/sub cannot reach other processes
            print("Embedded mode runs one worker; set DATABASE_URL and REDIS_URL for more.",
                  file=sys.stderr)
            workers = 1
    if workers > 1:
        share_metrics_between_workers(settings.port)
    base = f"http://{settings.host}:{settings.port}"
    print(f"Seat map on {base}/ ; GraphQL (playground in a browser) on {base}/graphql", file=sys.stderr)
    # No per-message deflate: it costs memory on every websocket, and updates are small.
    # X-Forwarded-For is believed only from TRUSTED_PROXIES: from anyone else it is a header
    # the client wrote, and per-address limits would count whatever address it names.
    options = dict(factory=True, host=settings.host, port=settings.port, workers=workers,
                   ws_per_message_deflate=False, ws_max_size=MAX_WEBSOCKET_FRAME,
                   http="app.http_protocol:TimedHttpToolsProtocol",
                   proxy_headers=bool(settings.trusted_proxies), forwarded_allow_ips=settings.trusted_proxies,
                   log_config=logging_config(json_lines=settings.production), access_log=False)
    if workers > 1 and app.workers.SPREADS_CONNECTIONS:  # each worker accepts on its own socket
        app.workers.run(uvicorn.Config("app.web:create_app", **options))
    else:
        uvicorn.run("app.web:create_app", **options)


def schema_sdl() -> str:
    from app.schema.schema import create_schema

    return create_schema(load_settings()).as_str()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bookmyevent", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="migrate, seed demo data in embedded mode, and serve")
    commands.add_parser("migrate", help="apply database migrations")
    commands.add_parser("seed-demo", help="create demo venues and events if there are none")
    admin = commands.add_parser("create-admin", help="create an administrator account")
    admin.add_argument("--email", required=True)
    admin.add_argument("--password", required=True)
    admin.add_argument("--name", default="Administrator")
    staff = commands.add_parser("create-staff", help="create a door staff account (check-in only)")
    staff.add_argument("--email", required=True)
    staff.add_argument("--password", required=True)
    staff.add_argument("--name", default="Door staff")
    commands.add_parser("rotate-ticket-key", help="sign new tickets with a new key; old tickets stay valid")
    retire = commands.add_parser("retire-ticket-key", help="refuse every ticket a rotated key signed")
    retire.add_argument("--kid", required=True)
    commands.add_parser("schema", help="print the GraphQL schema (SDL)")
    args = parser.parse_args(argv)

    from app.errors import DomainError
    from app.models import Role

    try:
        settings = load_settings()
        logging.config.dictConfig(logging_config(json_lines=settings.production))
        if args.command == "serve":
            serve(settings)
        elif args.command == "migrate":
            migrate(settings)
        elif args.command == "seed-demo":
            migrate(settings)
            print("Seeded." if seed_demo(settings) else "Events exist already; nothing seeded.")
        elif args.command in ("create-admin", "create-staff"):
            migrate(settings)
            admin = args.command == "create-admin"
            create_account(settings, args.email, args.password, args.name, Role.ADMIN if admin else Role.STAFF)
            print(f"{'Administrator' if admin else 'Door staff'} {args.email} created.")
        elif args.command == "rotate-ticket-key":
            migrate(settings)
            print(f"New signing key {rotate_ticket_key(settings)}; earlier keys verify until retired.")
        elif args.command == "retire-ticket-key":
            migrate(settings)
            retire_ticket_key(settings, args.kid)
            print(f"Key {args.kid} retired: its tickets are refused.")
        elif args.command == "schema":
            print(schema_sdl())
    except (ConfigurationError, DomainError) as error:
        print(f"bookmyevent: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
