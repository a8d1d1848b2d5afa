"""The buyer's page on a phone: buy, reload, and the tickets are still there under "My
bookings", each with a QR code; nothing is wider than a 390 px screen. Chromium, Playwright,
the app under uvicorn on the embedded database (as tests/test_browser.py)."""

from __future__ import annotations

import pytest
from playwright.async_api import async_playwright
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.settings import Settings
from app.web import create_app
from tests.factories import make_event
from tests.servers import serve_in_process
from tests.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, require_chromium

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
            await page.fill("#auth-email", "phone@example.com")
            await page.fill("#auth-password", "correct horse battery")
            await page.fill("#auth-name", "Phone")
            await page.click("#register-btn")
            await page.wait_for_selector("#user-name:text('Phone (phone@example.com)')")
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
