"""Logging: JSON lines in production, readable lines in development, each record carrying
the id of the request it belongs to (also sent back in the X-Request-ID header)."""

from __future__ import annotations

import contextvars
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import DBAPIError

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


# The engine hides statement parameters (app/db.py), but database errors quote the values
# they refused themselves: PostgreSQL's DETAIL ("Key (email)=(…) already exists"), "invalid
# input syntax for type integer: "…"", asyncpg's "query argument $1: '…'". Logs keep the kind
# of error and the statement, not the values (emails, keys).
_QUOTED_VALUES = re.compile(r"""(?m)^((?:DETAIL|HINT):).*$|(?<=: )(["']).*?\2(?=[\s),.]|$)""")


def _from_database(record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    while error is not None:
        if isinstance(error, DBAPIError):
            return True
        error = error.__cause__ or error.__context__
    return False


def redact_values(text: str) -> str:
    return _QUOTED_VALUES.sub(lambda match: f"{match.group(1)} [hidden]" if match.group(1) else "[hidden]", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if _from_database(record):
            entry = {key: redact_values(value) for key, value in entry.items()}
        return json.dumps(entry)


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return redact_values(text) if _from_database(record) else text


def logging_config(*, json_lines: bool) -> dict[str, Any]:
    """A dictConfig for the CLI and for uvicorn, which applies it in every worker process."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {
            "json": {"()": JsonFormatter},
            "plain": {"()": PlainFormatter,
                      "fmt": "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"},
        },
        "handlers": {"default": {"class": "logging.StreamHandler", "filters": ["request_id"],
                                 "formatter": "json" if json_lines else "plain"}},
        "root": {"handlers": ["default"], "level": "INFO"},
        "loggers": {
            "uvicorn": {"level": "INFO"},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"level": "WARNING"},
            "alembic": {"level": "WARNING"},
        },
    }
