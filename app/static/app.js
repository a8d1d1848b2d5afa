// BookMyEvent: a small client for the GraphQL API (see API.md). No framework, no build step.
"use strict";

const TOKEN_KEY = "bme.token";
const REFRESH_KEY = "bme.refresh";  // renews the access token, and is revoked on sign-out
const $ = (selector) => document.querySelector(selector);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  refresh: sessionStorage.getItem(REFRESH_KEY),
  event: null,          // the open event, as the `event` query returned it
  seats: new Map(),     // seat id -> {seat, el}
  selected: new Set(),  // seat ids picked for the next reservation
  version: null,        // the inventory version the seat map shows
  reloading: false,     // a re-read of the seats is in flight
  newestSeen: 0,        // newest version announced while re-reading
  hold: null,           // the user's current booking
  live: null,           // the LiveFeed of the open event
  ticket: null,         // the user's queue ticket for the open event, if it has a waiting room
  firstPosition: null,  // the ticket's position when this page first saw it (the progress bar's start)
  queueFeed: null,      // the LiveFeed of that ticket
  bookingsRead: 0,      // the latest "My bookings" read: only it is shown
  reserving: false,     // a reservation is in flight: its own seats turning HELD are not "taken"
  renewal: null,        // the token renewal in flight: calls refused together share it
};

// Seats come in pages (the server's largest is 5,000): the first with the event, then the rest.
const SEAT_PAGE_SIZE = 5000;
const SEAT_FIELDS = "id section row number label status priceCents";
const EVENT_QUERY = `query($id: ID!, $first: Int!) { event(id: $id) {
  id name description startsAt status availableSeats version priceCents currency maxTicketsPerBooking
  maxTicketsPerUser salesStartAt waitingRoom { admitPerMinute queueLength } venue { name city timezone }
  seatMap { name }
  seats(first: $first) { ${SEAT_FIELDS} } } }`;
const SEAT_PAGE_QUERY = `query($id: ID!, $first: Int!, $after: ID) { event(id: $id) {
  seats(first: $first, after: $after) { ${SEAT_FIELDS} } } }`;
const BOOKING = `id reference status quantity totalCents currency expiresAt ticketUrl
  event { id name } seats { id label }`;
const BOOKING_FIELDS = `booking { ${BOOKING} } errors { code message }`;
const SESSION_FIELDS = "accessToken refreshToken user { name email } errors { code message }";
const AVAILABILITY_SUBSCRIPTION = `subscription($eventId: ID!) { eventAvailability(eventId: $eventId) {
  eventId availableSeats version sinceVersion status snapshot changedSeats { seatId status } } }`;
const TICKET = "eventId status position estimatedWaitSeconds admittedUntil joinedAt";
const QUEUE_SUBSCRIPTION = `subscription($eventId: ID!) { queueStatus(eventId: $eventId) { ${TICKET} } }`;

// --- helpers ---------------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  el.append(...children.flat().filter((child) => child !== null && child !== undefined));
  return el;
}

function money(cents, currency) {
  return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(cents / 100);
}

function showMessages(texts, kind = "error") {
  $("#messages").replaceChildren(...texts.map((text) => h("p", { class: kind }, text)));
}

const clearMessages = () => showMessages([]);

const STATUS_TEXT = { DRAFT: "Draft", SCHEDULED: "Not on sale yet", ON_SALE: "On sale", SOLD_OUT: "Sold out",
                      CANCELLED: "Cancelled" };
const statusText = (status) => STATUS_TEXT[status] ?? status;

// An event's time as people at the venue read it ("Sat 14 Dec, 18:00 WET"), with the year when
// it is not this one.
function when(iso, timeZone) {
  const date = new Date(iso);
  const year = new Intl.DateTimeFormat("en", { year: "numeric", timeZone }).format(date);
  const options = { weekday: "short", day: "numeric", month: "short", hour: "2-digit", minute: "2-digit",
                    timeZone, timeZoneName: "short" };
  if (year !== String(new Date().getFullYear())) options.year = "numeric";
  return new Intl.DateTimeFormat(undefined, options).format(date);
}

async function post(query, variables, token = state.token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch("/graphql", { method: "POST", headers, body: JSON.stringify({ query, variables }) });
  return response.json();
}

const refusedForToken = (body) => [...(body.errors ?? []), ...(body.data?.result?.errors ?? [])]
  .some((error) => (error.extensions?.code ?? error.code) === "UNAUTHENTICATED");

// An access token lasts minutes, a page stays open longer: a call refused for an expired
// token gets a new one from the refresh token, once, and is sent again. A refresh token is
// good for one renewal, so calls refused together (a reload's first calls) share one.
function renewSession() {
  state.renewal ??= (async () => {
    if (!state.refresh) return false;
    const body = await post(`mutation($token: String!) { result: refreshToken(refreshToken: $token) {
      ${SESSION_FIELDS} } }`, { token: state.refresh }, null);
    const renewed = body.data?.result;
    if (!renewed?.accessToken) return false;
    setToken(renewed.accessToken, renewed.refreshToken);
    return true;
  })().finally(() => { state.renewal = null; });
  return state.renewal;
}

// A server too busy to take a call says when to come back (RATE_LIMITED with
// retryAfterSeconds: the waiting room's gate on a big on-sale). With `untilServed` the page
// comes back by itself, and says so meanwhile.
async function gql(query, variables = {}, { untilServed = false } = {}) {
  try {
    for (;;) {
      const token = state.token;
      let body = await post(query, variables, token);
      // Already renewed by another call while this one was out: only sent again.
      if (token && refusedForToken(body) && (state.token !== token || await renewSession())) {
        body = await post(query, variables);
      }
      const busy = untilServed && body.errors?.find((error) => error.extensions?.code === "RATE_LIMITED");
      if (busy) {
        const seconds = busy.extensions.retryAfterSeconds ?? 1;
        showMessages([`${busy.message} (trying again in ${seconds} s)`], "info");
        await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
        continue;
      }
      if (body.errors?.length) showMessages(body.errors.map((error) => error.message));
      return body.data ?? null;
    }
  } catch (error) {
    showMessages([`Network error: ${error.message}`]);
    return null;
  }
}

// Runs a mutation that returns a payload with `errors`; shows them; the payload on success.
async function mutate(query, input, button) {
  if (button) button.disabled = true;
  try {
    const data = await gql(query, { input });
    const payload = data?.result;
    if (!payload) return null;
    if (payload.errors.length) {
      showMessages(payload.errors.map((error) => error.message));
      return null;
    }
    clearMessages();
    return payload;
  } finally {
    if (button) button.disabled = false;
    updateControls();
  }
}

// --- account ---------------------------------------------------------------------------------

function remember(key, value) {
  if (value) sessionStorage.setItem(key, value);
  else sessionStorage.removeItem(key);
}

function setToken(token, refresh = state.refresh) {
  state.token = token;
  state.refresh = refresh;
  remember(TOKEN_KEY, token);
  remember(REFRESH_KEY, refresh);
  updateControls();
}

function showUser(user) {
  $("#auth-form").hidden = Boolean(user);
  $("#signed-in").hidden = !user;
  $("#user-name").textContent = user ? `${user.name} (${user.email})` : "";
  loadMyBookings();
}

// Every booking of the signed-in user, with its tickets' links and QR codes: what they bought
// stays reachable after a reload.
async function loadMyBookings() {
  const read = ++state.bookingsRead;
  const data = state.token ? await gql(`query { myBookings(first: 50) { edges { node {
    id reference status quantity totalCents currency ticketUrl event { name } tickets { code status url } } } } }`)
    : null;
  if (read !== state.bookingsRead) return;  // a newer read is on its way
  const bookings = data?.myBookings.edges.map((edge) => edge.node) ?? [];
  $("#my-bookings").hidden = !bookings.length;
  $("#my-bookings-list").replaceChildren(...bookings.map((booking) => h("li",
    { "data-booking-id": booking.id, "data-status": booking.status },
    h("strong", {}, booking.event.name), ` · ${booking.reference} · ${booking.status.toLowerCase()} · `,
    money(booking.totalCents, booking.currency),
    booking.ticketUrl ? h("p", {}, h("a", { href: booking.ticketUrl, target: "_blank", rel: "noopener" },
                                     "Tickets (print or show at the door)")) : null,
    booking.status === "CONFIRMED" ? h("p", { class: "qr-codes" }, ...booking.tickets.map((ticket) =>
      h("a", { href: ticket.url, target: "_blank", rel: "noopener" },
        h("img", { class: "qr", src: `${ticket.url}/qr.svg`, alt: `QR code of ticket (${ticket.status})` })))) : null)));
}

async function signIn(kind, button) {
  const form = $("#auth-form");
  const email = form.email.value.trim();
  const input = { email, password: form.password.value };
  if (kind === "register") input.name = form.name.value.trim() || email.split("@")[0];
  const type = kind === "register" ? "RegisterInput" : "LoginInput";
  const payload = await mutate(`mutation($input: ${type}!) { result: ${kind}(input: $input) {
    ${SESSION_FIELDS} } }`, input, button);
  if (!payload) return;
  form.reset();
  setToken(payload.accessToken, payload.refreshToken);
  showUser(payload.user);
  if (state.event) await Promise.all([loadHold(state.event.id), loadTicket(state.event.id)]);
}

async function signOut() {
  if (state.refresh) {  // ends the session on the server too, not only in this tab
    await gql("mutation($token: String!) { logout(refreshToken: $token) { errors { code } } }",
      { token: state.refresh });
  }
  setToken(null, null);
  showUser(null);
  setHold(null);
  setTicket(null);
}

// After a reload the tab still has its tokens (gql renews an access token that ran out).
async function restoreSession() {
  if (!state.token) return showUser(null);
  const data = await gql("query { me { name email } }");
  if (data?.me) return showUser(data.me);
  setToken(null, null);
  showUser(null);
  showMessages(["Your session has ended: please sign in again."]);
}

// The signed-in user's hold on this event, if any: a reload must not hide it.
async function loadHold(eventId) {
  if (!state.token) return;
  const data = await gql(`query { myBookings(status: PENDING, first: 50) { edges { node { ${BOOKING} } } } }`);
  const now = Date.now();
  const hold = data?.myBookings.edges.map((edge) => edge.node)
    .find((booking) => booking.event.id === eventId && Date.parse(booking.expiresAt) > now);
  if (hold) setHold(hold);
}

// --- catalogue -------------------------------------------------------------------------------

async function loadEvents() {
  const data = await gql(`query { events(first: 50) { edges { node {
    id name startsAt status availableSeats venue { name city timezone } } } } }`);
  const events = data ? data.events.edges.map((edge) => edge.node) : [];
  $("#event-list").replaceChildren(...(events.length ? events.map((event) => h("li", {},
    h("a", { href: `#event/${event.id}`, class: "event", "data-event-id": event.id },
      h("strong", {}, event.name),
      h("span", {}, `${event.venue.name}, ${event.venue.city}`),
      h("span", {}, when(event.startsAt, event.venue.timezone)),
      h("span", {}, h("span", { class: "avail" }, String(event.availableSeats)), " left · ",
        h("span", { class: "status" }, statusText(event.status)))))) : [h("li", {}, "No events on sale.")]));
}

// The event with every one of its seats; null when it is gone. Later pages may be newer than
// the event's version: the live feed's changes since that version are applied over them.
async function readEvent(id) {
  const data = await gql(EVENT_QUERY, { id, first: SEAT_PAGE_SIZE });
  const event = data?.event;
  let page = event?.seats ?? [];
  while (page.length === SEAT_PAGE_SIZE) {
    const more = await gql(SEAT_PAGE_QUERY, { id, first: SEAT_PAGE_SIZE, after: page[page.length - 1].id });
    if (!more?.event) return null;
    page = more.event.seats;
    event.seats.push(...page);
  }
  return event ?? null;
}

async function openEvent(id) {
  if (state.event && state.event.id !== id) clearMessages();  // the last event's news is not this one's
  state.selected.clear();
  const event = await readEvent(id);
  if (!event) {
    showMessages(["Event not found."]);
    return;
  }
  state.event = event;
  $("#event-detail").hidden = false;
  $("#event-name").textContent = event.name;
  $("#event-meta").textContent = `${event.venue.name}, ${event.venue.city} · `
    + `${when(event.startsAt, event.venue.timezone)}${event.seatMap ? "" : ` · ${money(event.priceCents, event.currency)}`}`;
  $("#event-description").textContent = event.description ?? "";
  $("#event-description").hidden = !event.description;
  $("#seat-area").hidden = !event.seatMap;
  $("#ga-picker").hidden = Boolean(event.seatMap);
  $("#quantity").max = event.maxTicketsPerBooking;
  for (const link of document.querySelectorAll("#event-list a")) {
    link.toggleAttribute("aria-current", link.dataset.eventId === event.id);
  }
  showEventState(event);
  startLive(event.id);
  setTicket(null);
  await Promise.all([loadHold(event.id), loadTicket(event.id)]);
}

function showEventState(event) {
  state.version = event.version;
  renderSeats(event.seats);
  showAvailability(event.availableSeats, event.status);
}

function showAvailability(available, status) {
  state.event.availableSeats = available;
  state.event.status = status;
  $("#available-seats").textContent = String(available);
  $("#event-status").textContent = statusText(status);
  const listed = document.querySelector(`#event-list [data-event-id="${CSS.escape(state.event.id)}"]`);
  if (listed) {
    listed.querySelector(".avail").textContent = String(available);
    listed.querySelector(".status").textContent = statusText(status);
  }
  updateControls();
}

// --- seat map --------------------------------------------------------------------------------

function holdSeatIds() {
  const hold = state.hold;
  return hold?.status === "PENDING" ? new Set(hold.seats.map((seat) => seat.id)) : new Set();
}

function renderSeats(seats) {
  state.seats.clear();
  const sections = new Map((state.event.seatMap ?? []).map((section) => [section.name, new Map()]));
  for (const seat of seats) {
    if (!sections.has(seat.section)) sections.set(seat.section, new Map());
    const rows = sections.get(seat.section);
    if (!rows.has(seat.row)) rows.set(seat.row, []);
    rows.get(seat.row).push(seat);
  }
  const mine = holdSeatIds();
  const taken = [];
  const blocks = [...sections].map(([name, rows]) => h("div", { class: "section" },
    h("h3", {}, name, " ", h("span", { class: "section-price" }, sectionPrice([...rows.values()].flat()))),
    [...rows].map(([row, rowSeats]) => h("div", { class: "row" },
      h("span", { class: "row-label", "aria-hidden": "true" }, row),
      rowSeats.sort((a, b) => a.number - b.number).map((seat) => {
        const el = h("button", { type: "button", class: "seat", "data-seat-id": seat.id }, String(seat.number));
        const entry = { seat, el };
        state.seats.set(seat.id, entry);
        paintSeat(entry, mine, taken);
        return el;
      })))));
  $("#seat-map").replaceChildren(...blocks);
  $("#seat-map").dataset.version = String(state.version);
  announceTaken(taken);
}

function sectionPrice(seats) {
  const prices = seats.map((seat) => seat.priceCents);
  const low = Math.min(...prices);
  const price = money(low, state.event.currency);
  return low === Math.max(...prices) ? price : `from ${price}`;
}

// A selected seat someone else took is dropped from the selection: `taken` collects its label,
// for announceTaken to tell the buyer.
function paintSeat({ seat, el }, mine = holdSeatIds(), taken = []) {
  if (seat.status !== "AVAILABLE" && state.selected.delete(seat.id) && !state.reserving) taken.push(seat.label);
  const isMine = mine.has(seat.id);
  el.dataset.status = seat.status;
  el.classList.toggle("mine", isMine);
  el.disabled = seat.status !== "AVAILABLE";
  el.setAttribute("aria-pressed", String(state.selected.has(seat.id)));
  const price = money(seat.priceCents, state.event.currency);
  const status = isMine ? "in your hold" : seat.status.toLowerCase();
  el.title = `${seat.label}, ${price}: ${status}`;
  el.setAttribute("aria-label", el.title);
}

const repaintSeats = () => {
  const mine = holdSeatIds();
  for (const entry of state.seats.values()) paintSeat(entry, mine);
  updateControls();
};

function announceTaken(labels) {
  if (!labels.length) return;
  const which = labels.length === 1 ? `Seat ${labels[0]} was` : `Seats ${labels.join(", ")} were`;
  showMessages([`${which} just taken by someone else and removed from your selection.`]);
}

function toggleSeat(button) {
  const id = button.dataset.seatId;
  if (state.selected.has(id)) state.selected.delete(id);
  else if (state.selected.size >= state.event.maxTicketsPerBooking) {
    showMessages([ticketLimit(state.event)]);
    return;
  } else state.selected.add(id);
  button.setAttribute("aria-pressed", String(state.selected.has(id)));
  updateControls();
}

// --- live availability -----------------------------------------------------------------------

// One graphql-transport-ws connection carrying one subscription; reconnects with backoff.
// Availability goes anonymous: it is public, and a token would only make reconnects fail once
// it has expired. The queue ticket is private: its feed signs in (`token`).
class LiveFeed {
  constructor(eventId, { query = AVAILABILITY_SUBSCRIPTION, apply = (data) => applyAvailability(data.eventAvailability),
                         token = null, showState = setLiveState } = {}) {
    Object.assign(this, { eventId, query, apply, token, showState, attempt: 0, stopped: false, ws: null, timer: null });
    this.connect();
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/graphql`, "graphql-transport-ws");
    this.ws = ws;
    this.showState("connecting", "connecting…");
    const send = (message) => ws.send(JSON.stringify(message));
    const init = this.token ? { authorization: `Bearer ${state.token}` } : {};
    ws.addEventListener("open", () => send({ type: "connection_init", payload: init }));
    ws.addEventListener("message", (message) => {
      if (ws !== this.ws || this.stopped) return;
      const msg = JSON.parse(message.data);
      if (msg.type === "connection_ack") {
        send({ id: "1", type: "subscribe",
               payload: { query: this.query, variables: { eventId: this.eventId } } });
      } else if (msg.type === "ping") {
        send({ type: "pong" });
      } else if (msg.type === "next") {
        if (msg.payload.errors?.length) showMessages(msg.payload.errors.map((error) => error.message));
        if (!msg.payload.data) return;
        this.attempt = 0;
        this.showState("live", "live");
        this.apply(msg.payload.data);
      } else if (msg.type === "error") {
        showMessages(msg.payload.map((error) => error.message));
        this.stop();
        this.showState("failed", "live updates unavailable");
      } else if (msg.type === "complete") {
        ws.close(1000);  // the server ended the stream: subscribe again after a pause
      }
    });
    ws.addEventListener("close", () => {
      if (ws !== this.ws || this.stopped) return;
      const delay = Math.min(15000, 500 * 2 ** this.attempt) * (0.75 + Math.random() / 2);
      this.attempt += 1;
      this.showState("reconnecting", `reconnecting in ${Math.ceil(delay / 1000)} s…`);
      this.timer = setTimeout(() => this.connect(), delay);
    });
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000);
  }
}

function setLiveState(key, text) {
  const el = $("#live-state");
  el.dataset.state = key;
  el.textContent = text;
}

function startLive(eventId) {
  state.live?.stop();
  state.live = new LiveFeed(eventId);
}

function applyAvailability(update) {
  if (!state.event || update.eventId !== state.event.id) return;
  showAvailability(update.availableSeats, update.status);
  if (state.reloading) {
    state.newestSeen = Math.max(state.newestSeen, update.version);
    return;
  }
  if (update.version <= state.version && !update.snapshot) return;  // already shown
  // A snapshot (a new or renewed connection), or changes this page never saw: re-read the
  // seats. A jump in version alone is not that: changes close together arrive merged, and
  // changedSeats then covers all of them since sinceVersion.
  if (update.snapshot ? update.version !== state.version : update.sinceVersion > state.version) {
    reloadSeats(update.version);
    return;
  }
  let unknownSeat = false;
  const mine = holdSeatIds();
  const taken = [];
  for (const change of update.changedSeats) {
    const entry = state.seats.get(change.seatId);
    if (!entry) { unknownSeat = true; continue; }
    entry.seat.status = change.status;
    paintSeat(entry, mine, taken);
  }
  announceTaken(taken);
  state.version = update.version;
  $("#seat-map").dataset.version = String(state.version);
  updateControls();
  if (unknownSeat) reloadSeats(update.version);
}

async function reloadSeats(version) {
  const id = state.event.id;
  state.reloading = true;
  state.newestSeen = version;
  try {
    for (let attempt = 0; attempt < 3; attempt += 1) {
      const event = await readEvent(id);
      if (!event || state.event?.id !== id) return;
      Object.assign(state.event, event);
      showEventState(state.event);
      if (state.version >= state.newestSeen) return;
    }
  } finally {
    state.reloading = false;
  }
}

// --- waiting room ----------------------------------------------------------------------------

// On an event with a waiting room only admitted buyers reserve: the page shows the queue (place,
// estimated wait, a progress bar) until the admission arrives, then the seat map with the time left.
async function loadTicket(eventId) {
  if (!state.token || !state.event?.waitingRoom) return renderQueue();
  const data = await gql(`query($id: ID!) { myQueueTicket(eventId: $id) { ${TICKET} } }`, { id: eventId });
  if (state.event?.id === eventId) setTicket(data?.myQueueTicket ?? null);
}

async function joinQueue() {
  const button = $("#join-queue-btn");
  button.disabled = true;
  try {
    const data = await gql(`mutation($id: ID!) { result: joinQueue(eventId: $id) { ticket { ${TICKET} }
      errors { code message } } }`, { id: state.event.id }, { untilServed: true });
    const payload = data?.result;
    if (payload?.errors.length) showMessages(payload.errors.map((error) => error.message));
    else if (payload) { clearMessages(); setTicket(payload.ticket); }
  } finally {
    button.disabled = false;
  }
}

function setTicket(ticket) {
  const following = state.queueFeed && state.ticket && ticket;
  state.ticket = ticket;
  if (ticket?.status === "WAITING" && state.firstPosition === null) state.firstPosition = ticket.position;
  if (!ticket) state.firstPosition = null;
  if (!following) {
    state.queueFeed?.stop();
    state.queueFeed = ticket ? new LiveFeed(ticket.eventId, {
      query: QUEUE_SUBSCRIPTION, token: true, showState: () => {},
      apply: (data) => { if (state.ticket?.eventId === data.queueStatus.eventId) setTicket(data.queueStatus); },
    }) : null;
  }
  renderQueue();
}

const admitted = () => state.ticket?.status === "ADMITTED" && Date.parse(state.ticket.admittedUntil) > Date.now();
const queueBlocks = () => Boolean(state.event?.waitingRoom) && !admitted();

function renderQueue() {
  const room = $("#waiting-room");
  const event = state.event;
  room.hidden = !event?.waitingRoom;
  if (!event) return;
  const ticket = state.ticket;
  const blocked = queueBlocks();
  $("#seat-area").hidden = !event.seatMap || blocked;
  $("#reserve-form").hidden = blocked;
  room.dataset.status = ticket?.status ?? "NONE";
  const canJoin = Boolean(state.token) && (!ticket || ["LEFT", "LAPSED"].includes(ticket.status)
    || (ticket.status === "ADMITTED" && !admitted()));
  $("#join-queue-btn").hidden = !canJoin;
  $("#queue-progress").hidden = ticket?.status !== "WAITING";
  let text = "";
  if (!state.token) text = "This sale has a waiting room: sign in to join the queue.";
  else if (!ticket) text = "This sale has a waiting room: join the queue to get your turn.";
  else if (ticket.status === "WAITING") {
    const wait = ticket.estimatedWaitSeconds === null ? "admission is paused"
      : `about ${Math.max(1, Math.round(ticket.estimatedWaitSeconds / 60))} min to wait`;
    text = `You are number ${ticket.position} in the queue · ${wait}`;
    const start = Math.max(state.firstPosition ?? ticket.position, ticket.position);
    $("#queue-progress").value = start > 1 ? (start - ticket.position) / (start - 1) : 1;
  } else if (ticket.status === "SOLD_OUT") text = "Sold out while you waited: you may join the waitlist.";
  else if (ticket.status === "LEFT") text = "You left the queue.";
  else if (!admitted()) text = "Your turn has passed: join the queue again.";
  $("#queue-text").textContent = text;
  tickAdmission();
  updateControls();
}

function tickAdmission() {  // an admission's remaining time, once a second
  const el = $("#admission-countdown");
  if (!admitted()) {
    el.textContent = "";
    if (state.ticket?.status === "ADMITTED" && !$("#reserve-form").hidden) renderQueue();  // it just ran out
    return;
  }
  const left = Math.max(0, Math.round((Date.parse(state.ticket.admittedUntil) - Date.now()) / 1000));
  el.textContent = `It's your turn: reserve within ${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`;
}

// --- booking ---------------------------------------------------------------------------------

function updateControls() {
  const event = state.event;
  const button = $("#reserve-btn");
  const hint = $("#reserve-hint");
  if (!event) return;
  // Said up front, and the reason Reserve is off for too many: before the browser's own warning.
  const limit = ticketLimit(event);
  $("#ticket-limit").textContent = limit;
  const quantity = Number($("#quantity").value);
  let reason = "";
  if (!state.token) reason = "Sign in to reserve.";
  else if (event.status !== "ON_SALE") reason = "This event is not on sale.";
  else if (queueBlocks()) reason = "Wait for your turn in the queue.";
  else if (event.seatMap && state.selected.size === 0) reason = "Pick seats on the map.";
  else if (!event.seatMap && !(quantity >= 1 && quantity <= event.maxTicketsPerBooking)) reason = limit;
  button.disabled = Boolean(reason);
  if (reason) hint.textContent = reason;
  else if (event.seatMap) {
    const total = [...state.selected].reduce((sum, id) => sum + state.seats.get(id).seat.priceCents, 0);
    hint.textContent = `${state.selected.size} selected: ${money(total, event.currency)}`;
  } else hint.textContent = `${money(event.priceCents, event.currency)} each`;
}

// A cap per buyer above what is left caps nothing, so it goes unsaid.
function ticketLimit(event) {
  const perBooking = event.maxTicketsPerBooking;
  const perUser = event.maxTicketsPerUser;
  if (perUser === perBooking) return `Up to ${perBooking} tickets per person.`;
  const total = perUser < event.availableSeats ? `, ${perUser} per person in all` : "";
  return `Up to ${perBooking} tickets per booking${total}.`;
}

async function reserve() {
  const event = state.event;
  const input = { eventId: event.id };
  if (event.seatMap) input.seatIds = [...state.selected];
  else input.quantity = Number($("#quantity").value);
  state.reserving = true;
  let payload;
  try {
    payload = await mutate(`mutation($input: ReserveInput!) { result: reserveSeats(input: $input) {
      ${BOOKING_FIELDS} } }`, input, $("#reserve-btn"));
  } finally {
    state.reserving = false;
  }
  if (!payload) return;
  state.selected.clear();
  setHold(payload.booking);
}

async function pay() {
  const payload = await mutate(`mutation($input: ConfirmInput!) { result: confirmBooking(input: $input) {
    ${BOOKING_FIELDS} } }`, { bookingId: state.hold.id, paymentToken: $("#test-card").value }, $("#pay-btn"));
  if (!payload) return;
  setHold(payload.booking);
  showMessages([`Paid: booking ${payload.booking.reference} is confirmed.`], "info");
}

async function cancel() {
  const payload = await mutate(`mutation($input: CancelInput!) { result: cancelBooking(input: $input) {
    ${BOOKING_FIELDS} } }`, { bookingId: state.hold.id }, $("#cancel-btn"));
  if (!payload) return;
  setHold(payload.booking);
  showMessages([`Booking ${payload.booking.reference} is cancelled.`], "info");
}

function setHold(booking) {
  state.hold = booking;
  renderHold();
  repaintSeats();
  loadMyBookings();
}

function renderHold() {
  const hold = state.hold;
  $("#hold").hidden = !hold;
  if (!hold) return;
  const what = hold.seats.length ? `seats ${hold.seats.map((seat) => seat.label).join(", ")}`
    : `${hold.quantity} place${hold.quantity === 1 ? "" : "s"}`;
  $("#hold-summary").textContent = `${hold.reference}: ${what} for ${hold.event.name}, `
    + `${money(hold.totalCents, hold.currency)}`;
  $("#hold").dataset.status = hold.status;
  $("#hold-status").textContent = hold.status.toLowerCase();
  $("#payment").hidden = hold.status !== "PENDING";
  $("#pay-btn").textContent = `Pay ${money(hold.totalCents, hold.currency)}`;
  $("#cancel-btn").hidden = !["PENDING", "CONFIRMED"].includes(hold.status);
  $("#ticket").hidden = !hold.ticketUrl;
  if (hold.ticketUrl) $("#ticket-link").href = hold.ticketUrl;
  tick();
}

function tick() {  // the hold's countdown, once a second
  const hold = state.hold;
  const countdown = $("#hold-countdown");
  if (hold?.status !== "PENDING" || !hold.expiresAt) {
    countdown.textContent = "";
    return;
  }
  const left = Math.max(0, Math.round((Date.parse(hold.expiresAt) - Date.now()) / 1000));
  countdown.textContent = `expires in ${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`;
  if (left === 0) {
    hold.status = "EXPIRED";
    setHold(hold);
    showMessages(["Your hold has expired: the seats are back on sale."]);
  }
}

// --- wiring ----------------------------------------------------------------------------------

function routeFromHash() {
  const match = /^#event\/(.+)$/.exec(location.hash);
  if (match) openEvent(decodeURIComponent(match[1]));
}

document.addEventListener("DOMContentLoaded", async () => {
  $("#auth-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const button = event.submitter ?? $("#login-btn");
    signIn(button.value === "register" ? "register" : "login", button);
  });
  $("#logout-btn").addEventListener("click", signOut);
  $("#seat-map").addEventListener("click", (event) => {
    const button = event.target.closest("button.seat");
    if (button && !button.disabled) toggleSeat(button);
  });
  $("#reserve-form").addEventListener("submit", (event) => { event.preventDefault(); reserve(); });
  $("#quantity").addEventListener("input", updateControls);
  $("#pay-btn").addEventListener("click", pay);
  $("#cancel-btn").addEventListener("click", cancel);
  $("#join-queue-btn").addEventListener("click", joinQueue);
  window.addEventListener("hashchange", routeFromHash);
  setInterval(() => { tick(); tickAdmission(); }, 1000);
  await Promise.all([restoreSession(), loadEvents()]);
  routeFromHash();
});
