"""Past one machine (issue #18): the service on the engines that scale it out, each started
here on a free port: PgBouncer in transaction pooling between the app and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from app.settings import Settings
from tests import test_batching, test_concurrency
from tests.conftest import POSTGRES_ADMIN_URL, POSTGRES_DB, base_settings
from tests.servers import PgBouncerProcess


@pytest.fixture(scope="session")
async def pgbouncer(postgres_database: str,
                    tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PgBouncerProcess]:
    admin = urlsplit(POSTGRES_ADMIN_URL)
    # Fewer server connections than the tests' pools hold client ones: transactions share them.
    bouncer = PgBouncerProcess(tmp_path_factory.mktemp("pgbouncer"), postgres_host=admin.hostname or "127.0.0.1",
                               postgres_port=admin.port or 5432, pool_size=8)
    await bouncer.start()
    yield bouncer
    await bouncer.stop()


# --- PgBouncer: the concurrency suite's core races through it -------------------------------

@pytest.fixture
def backend() -> str:
    return "postgres"


@pytest.fixture
def database_url(pgbouncer: PgBouncerProcess) -> str:
    return pgbouncer.url(POSTGRES_DB)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return base_settings(database_url=database_url, db_pgbouncer=True)


# The same tests, collected here, so they take this module's fixtures: their sessions go
# through PgBouncer, and their truth is still read from the database.
test_25_buyers_of_2_places_against_100_all_succeed = \
    test_concurrency.test_25_buyers_of_2_places_against_100_all_succeed
test_1000_buyers_against_300_places_sell_exactly_300 = \
    test_concurrency.test_1000_buyers_against_300_places_sell_exactly_300
test_200_best_available_buyers_get_different_seats = test_concurrency.test_200_best_available_buyers_get_different_seats
test_50_buyers_racing_for_one_seat = test_concurrency.test_50_buyers_racing_for_one_seat
test_one_idempotency_key_raced_has_one_effect = test_concurrency.test_one_idempotency_key_raced_has_one_effect
test_confirm_racing_cancel_and_double_confirm_charge_once = \
    test_concurrency.test_confirm_racing_cancel_and_double_confirm_charge_once
test_buyers_that_arrive_together_share_one_transaction_and_one_message = \
    test_batching.test_buyers_that_arrive_together_share_one_transaction_and_one_message
test_mixed_quantities_racing_for_the_last_places_never_oversell_nor_refuse_a_fit = \
    test_batching.test_mixed_quantities_racing_for_the_last_places_never_oversell_nor_refuse_a_fit
test_a_batch_whose_transaction_fails_fails_every_buyer_and_leaves_nothing = \
    test_batching.test_a_batch_whose_transaction_fails_fails_every_buyer_and_leaves_nothing
batcher = test_batching.batcher
published = test_batching.published
