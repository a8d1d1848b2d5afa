"""The buyer's page: on a phone, buy, reload, and the tickets are still there under "My
bookings", each with a QR code; nothing is wider than a 390 px screen. The page explains the
sale (times, statuses, limits, prices, a declined card), and a reload survives an expired access
token. Chromium, Playwright, the app under uvicorn on the embedded database (as
tests/test_browser.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from playwright.async_api import BrowserContext, async_playwright
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.settings import Settings
from app.web import create_app
from tests.factories import SMALL_SEAT_MAP, make_event, make_user, token_for
from tests.servers import serve_in_process
from tests.test_browser import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    open_page,
    outlive_access_token,
    register_on_page,
    require_chromium,
    seat_id,
)

PHONE = {"width": 390, "height": 844}


@pytest.fixture
def backend() -> str:
    return "sqlite"


async def test_bought_tickets_survive_a_reload_on_a_phone(settings: Settings,
                                                          sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    require_chromium()
    event = await make_event(sessionmaker, name="Phone Gig", capacity=50)
    problems: list[str] = []
    async with serve_in_process(create_app(settings)) as address, async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                                   headless=True, timeout=30_000)
        try:
            context = await browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
            context.set_default_timeout(TIMEOUT_MS)
            page = await context.new_page()
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            await page.goto(f"http://{address}/#event/{event.id}")
            await register_on_page(page, "Phone")
            await page.fill("#quantity", "2")
            await page.click("#reserve-btn")
            await page.wait_for_selector('#hold[data-status="PENDING"]')
            await page.click("#pay-btn")
            await page.wait_for_selector('#hold[data-status="CONFIRMED"]')

            await page.reload()
            booking = '#my-bookings-list li[data-status="CONFIRMED"]'
            await page.wait_for_selector(f"{booking}:has-text('Phone Gig')")
            link = await page.get_attribute(f"{booking} a[href*='/tickets/']", "href")
            assert link and (await context.request.get(link)).status == 200
            qr_codes = page.locator(f"{booking} img.qr")
            assert await qr_codes.count() == 2
            for index in range(2):  # each image loaded: an SVG the server drew for a valid code
                await qr_codes.nth(index).scroll_into_view_if_needed()
                await page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                                             arg=await qr_codes.nth(index).element_handle())
            src = await qr_codes.first.get_attribute("src")
            assert src and (await context.request.get(src)).headers["content-type"] == "image/svg+xml"
            await page.screenshot(path=ARTIFACTS / "buyer-phone.png", full_page=True)
            assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            assert problems == []
        finally:
            await browser.close()


async def reserve_as(context: BrowserContext, base: str, token: str, event_id: int, seat: str) -> None:
    """Another buyer, through the API: takes a seat while this page has it selected."""
    response = await context.request.post(f"{base}/graphql", headers={"Authorization": f"Bearer {token}"}, data={
        "query": "mutation($input: ReserveInput!) { reserveSeats(input: $input) { errors { code } } }",
        "variables": {"input": {"eventId": str(event_id), "seatIds": [seat]}}})
    assert (await response.json())["data"]["reserveSeats"]["errors"] == []


async def test_the_page_explains_the_sale(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """Description, status and time as people write them; the stage and section prices on the map;
    "selected" and "your hold" told apart; a seat taken from the selection is named; the ticket
    limit said up front; the amount on the Pay button and a declined card; and the messages of one
    event gone when another opens."""
    require_chromium()
    fado = await make_event(sessionmaker, seat_map=SMALL_SEAT_MAP, name="Fado Night",
                            description="Fado by candlelight.", starts_at=datetime(2030, 12, 14, 18, 0, tzinfo=UTC),
                            timezone="Europe/Lisbon",
                            max_tickets_per_booking=2, max_tickets_per_user=2)
    gig = await make_event(sessionmaker, name="Quiet Gig", capacity=50, max_tickets_per_booking=4,
                           max_tickets_per_user=6)
    seat = {(row, number): await seat_id(sessionmaker, fado.id, "Stalls", row, number)
            for row, number in [("A", 1), ("A", 2), ("A", 3), ("B", 1), ("B", 2)]}
    seat_in = {key: f'#seat-map [data-seat-id="{value}"]' for key, value in seat.items()}
    buyer, rival = await make_user(sessionmaker), await make_user(sessionmaker)
    problems: list[str] = []
    async with serve_in_process(create_app(settings)) as address, async_playwright() as playwright:
        base = f"http://{address}"
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                                   headless=True, timeout=30_000)
        try:
            context, page = await open_page(browser, problems, locale="en-GB")
            await context.add_init_script(
                f"sessionStorage.setItem('bme.token', {json.dumps(token_for(buyer, settings))})")
            await page.goto(f"{base}/#event/{fado.id}")
            await page.wait_for_selector('#live-state[data-state="live"]')
            assert await page.text_content("#event-description") == "Fado by candlelight."
            assert "Sat, 14 Dec 2030, 18:00 WET" in (await page.text_content("#event-meta") or "")
            assert await page.text_content("#event-status") == "On sale"
            assert await page.text_content(f'#event-list [data-event-id="{fado.id}"] .status') == "On sale"
            assert await page.is_visible("#seat-area .stage")
            assert await page.locator("#seat-map .section h3").all_text_contents() == [
                "Stalls US$50.00", "Balcony US$30.00"]
            assert await page.text_content("#ticket-limit") == "Up to 2 tickets per person."

            # Over the limit: said by the page, the third seat stays unselected.
            for key in [("A", 1), ("A", 2), ("A", 3)]:
                await page.click(seat_in[key])
            await page.wait_for_selector("#messages .error:text-is('Up to 2 tickets per person.')")
            assert await page.get_attribute(seat_in["A", 3], "aria-pressed") == "false"
            await page.click(seat_in["A", 2])
            await page.click("#reserve-btn")
            await page.wait_for_selector('#hold[data-status="PENDING"]')
            await page.wait_for_selector(f'{seat_in["A", 1]}.mine')

            # Selected and held look different; a selected seat another buyer takes is named.
            await page.click(seat_in["B", 1])
            await page.click(seat_in["B", 2])
            look = "el => getComputedStyle(el).background"
            assert await page.eval_on_selector(seat_in["A", 1], look) != \
                await page.eval_on_selector(seat_in["B", 1], look)
            await reserve_as(context, base, token_for(rival, settings), fado.id, seat["B", 2])
            await page.wait_for_selector(f'{seat_in["B", 2]}[data-status="HELD"]')
            message = await page.text_content("#messages .error") or ""
            assert "B2" in message and "taken by someone else" in message
            assert await page.get_attribute(seat_in["B", 1], "aria-pressed") == "true"
            assert await page.get_attribute(seat_in["B", 2], "aria-pressed") == "false"

            # Paying: the amount on the button; a declined test card keeps the hold.
            assert await page.text_content("#pay-btn") == "Pay US$50.00"
            await page.select_option("#test-card", "tok_decline")
            await page.click("#pay-btn")
            await page.wait_for_selector("#messages .error:text-is('The card was declined')")
            assert await page.get_attribute("#hold", "data-status") == "PENDING"

            # Another event: the last one's messages go; its limit is said before any warning.
            await page.click(f'#event-list [data-event-id="{gig.id}"]')
            await page.wait_for_selector("#event-name:text-is('Quiet Gig')")
            assert await page.text_content("#messages") == ""
            assert await page.is_hidden("#event-description")
            limit = "Up to 4 tickets per booking, 6 per person in all."
            assert await page.text_content("#ticket-limit") == limit
            await page.fill("#quantity", "5")
            assert await page.is_disabled("#reserve-btn")
            assert await page.text_content("#reserve-hint") == limit
            await page.screenshot(path=ARTIFACTS / "buyer-explained.png", full_page=True)
            assert problems == []
        finally:
            await browser.close()


async def test_a_reload_after_the_access_token_expired_stays_signed_in(
        settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """The reload's first calls all go out with the expired token at once: one renewal serves them,
    and the buyer is still signed in, with a new access token."""
    require_chromium()
    event = await make_event(sessionmaker, name="Encore")
    problems: list[str] = []
    async with serve_in_process(create_app(replace(settings, access_token_ttl_seconds=2))) as address, \
            async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                                   headless=True, timeout=30_000)
        try:
            _, page = await open_page(browser, problems)
            await page.goto(f"http://{address}/#event/{event.id}")
            await register_on_page(page, "Encore")
            first = await outlive_access_token(page)

            await page.reload()
            await page.wait_for_selector("#user-name:text('Encore (encore@example.com)')")
            await page.wait_for_selector("#reserve-btn:not([disabled])")
            assert await page.text_content("#messages") == ""
            assert await page.evaluate("sessionStorage.getItem('bme.token')") != first
            # A second reload: the renewed session still works (no renewal was spent twice).
            await page.reload()
            await page.wait_for_selector("#user-name:text('Encore (encore@example.com)')")
            assert await page.text_content("#messages") == ""
            assert [problem for problem in problems if "status of 401" not in problem] == []
        finally:
            await browser.close()
