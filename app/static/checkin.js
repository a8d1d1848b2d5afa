// BookMyEvent door check-in: typed codes, or the camera where the browser has BarcodeDetector.
// Online, every scan asks the server (one winner per ticket). Offline, a code is checked here
// against the published keys (WebCrypto Ed25519), the revoked list and this device's own
// scans; admitted scans are queued with their time and a nonce and uploaded when back online
// (the server orders them by time and answers a re-upload of the same nonce once).
"use strict";

const STORE = {
  token: "bme.door.token", refresh: "bme.door.refresh", jwks: "bme.door.jwks", queue: "bme.door.queue",
  seen: "bme.door.seen", revoked: "bme.door.revoked", event: "bme.door.event", gate: "bme.door.gate",
};
const SYNC_EVERY_MS = 20000;
const UPLOAD_RETRY_MS = 3000;
const CHECK_IN = `mutation($input: CheckInInput!) { checkIn(input: $input) {
  result checkedInAt gate errors { code message } } }`;
const $ = (selector) => document.querySelector(selector);

function load(key, fallback) {
  try {
    return JSON.parse(localStorage.getItem(key)) ?? fallback;
  } catch {
    return fallback;
  }
}
const save = (key, value) => localStorage.setItem(key, JSON.stringify(value));

class Offline extends Error {}

async function post(query, variables, retry = true) {
  const headers = { "Content-Type": "application/json" };
  const token = load(STORE.token, null);
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch("/graphql", { method: "POST", headers, body: JSON.stringify({ query, variables }) });
  } catch (error) {
    throw new Offline(String(error));
  }
  if (response.status === 401 && retry && await renew()) return post(query, variables, false);
  const body = await response.json();
  if (body.errors) throw new Error(body.errors[0].message);
  return body.data;
}

async function renew() {
  const refresh = load(STORE.refresh, null);
  if (!refresh) return false;
  localStorage.removeItem(STORE.token);
  const data = await post(`mutation($t: String!) { refreshToken(refreshToken: $t) {
    accessToken refreshToken errors { code } } }`, { t: refresh }, false);
  const renewed = data.refreshToken;
  if (renewed.errors.length) return false;
  save(STORE.token, renewed.accessToken);
  save(STORE.refresh, renewed.refreshToken);
  return true;
}

// --- what the door sees -----------------------------------------------------------------------

function show(ok, result, title, detail = "", offline = false) {
  const answer = $("#answer");
  answer.className = ok ? "ok" : "bad";
  answer.dataset.result = result;
  answer.dataset.offline = String(offline);
  const small = document.createElement("small");
  small.textContent = detail;
  answer.replaceChildren(title, small);
}

const clock = (iso) => new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });

function showQueue() {
  $("#queued").textContent = String(load(STORE.queue, []).length);
  $("#network").textContent = navigator.onLine ? "Online" : "Offline";
}

function remember(code, at, gate) {
  const seen = load(STORE.seen, {});
  if (!seen[code]) seen[code] = { at, gate };
  save(STORE.seen, seen);
}

const TICKET_ANSWERS = { TICKET_INVALID: true, TICKET_REVOKED: true };
const REFUSALS = {
  TICKET_INVALID: "Not a valid ticket",
  TICKET_REVOKED: "Cancelled ticket",
  FORBIDDEN: "This account may not check in",
  UNAUTHENTICATED: "Sign in again",
};

function showServerAnswer(code, payload) {
  if (payload.errors.length) {
    const error = payload.errors[0];
    show(false, error.code, REFUSALS[error.code] || error.message);
    return;
  }
  remember(code, payload.checkedInAt, payload.gate);
  if (payload.result === "OK") show(true, "OK", "Welcome in", `Checked in at ${clock(payload.checkedInAt)}`);
  else show(false, payload.result, "Already checked in",
            `at ${clock(payload.checkedInAt)}${payload.gate ? `, gate ${payload.gate}` : ""}`);
}

// --- offline: the signature, the revoked list, this device's scans ------------------------------

function bytes(base64url) {
  let text = base64url.replace(/-/g, "+").replace(/_/g, "/");
  while (text.length % 4) text += "=";
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

async function verifiedClaims(code) {
  const parts = code.split(".");
  if (parts.length !== 3) return null;
  try {
    const header = JSON.parse(new TextDecoder().decode(bytes(parts[0])));
    const jwk = load(STORE.jwks, { keys: [] }).keys.find((key) => key.kid === header.kid);
    if (!jwk || header.alg !== "EdDSA") return null;
    const key = await crypto.subtle.importKey("jwk", { kty: "OKP", crv: "Ed25519", x: jwk.x },
                                              { name: "Ed25519" }, false, ["verify"]);
    const signed = new TextEncoder().encode(`${parts[0]}.${parts[1]}`);
    if (!await crypto.subtle.verify({ name: "Ed25519" }, key, bytes(parts[2]), signed)) return null;
    return JSON.parse(new TextDecoder().decode(bytes(parts[1])));
  } catch {
    return null;  // not base64, not JSON, not a key: not a ticket
  }
}

async function admitOffline(scan) {
  const claims = await verifiedClaims(scan.code);
  if (!claims || (scan.eventId && claims.eid !== scan.eventId)) {
    show(false, "TICKET_INVALID", REFUSALS.TICKET_INVALID, "checked on this device", true);
    return;
  }
  if ((load(STORE.revoked, {})[scan.eventId] || []).includes(scan.code)) {
    show(false, "TICKET_REVOKED", REFUSALS.TICKET_REVOKED, "checked on this device", true);
    return;
  }
  const earlier = load(STORE.seen, {})[scan.code];
  if (earlier) {
    show(false, "ALREADY_CHECKED_IN", "Already checked in",
         `at ${clock(earlier.at)}${earlier.gate ? `, gate ${earlier.gate}` : ""} (this device)`, true);
    return;
  }
  remember(scan.code, scan.scannedAt, scan.gate);
  save(STORE.queue, [...load(STORE.queue, []), scan]);
  showQueue();
  show(true, "OK", "Welcome in", "offline: will upload when back online", true);
}

// --- scanning ---------------------------------------------------------------------------------

async function scan(code) {
  code = code.trim();
  if (!code) return;
  const eventId = $("#event-id").value.trim() || null;
  const gate = $("#gate").value.trim() || null;
  const scanned = { code, eventId, gate, scannedAt: new Date().toISOString(), nonce: crypto.randomUUID() };
  try {
    // Live: no scannedAt, the server's clock decides (one OK of any number of gates).
    const data = await post(CHECK_IN, { input: { code, eventId, gate, nonce: scanned.nonce } });
    showServerAnswer(code, data.checkIn);
  } catch (error) {
    if (!(error instanceof Offline)) {
      show(false, "ERROR", "Could not check", error.message);
      return;
    }
    await admitOffline(scanned);  // the same nonce: if the server did get it, the upload is answered once
  }
}

let uploading = false;

async function upload() {
  if (uploading) return;
  uploading = true;
  try {
    for (const queued of load(STORE.queue, [])) {
      const { code, eventId, gate, scannedAt, nonce } = queued;
      const answer = (await post(CHECK_IN, { input: { code, eventId, gate, scannedAt, nonce } })).checkIn;
      // Answered about the ticket: done. Refused for other reasons (a rate limit, signed out): kept.
      if (answer.errors.length && !(answer.errors[0].code in TICKET_ANSWERS)) break;
      save(STORE.queue, load(STORE.queue, []).filter((item) => item.nonce !== nonce));
      showQueue();
    }
  } catch (error) {
    if (!(error instanceof Offline)) console.warn("upload stopped:", error.message);
  } finally {
    uploading = false;
  }
}

async function sync() {
  showQueue();
  await upload();
  try {
    const response = await fetch("/.well-known/ticket-keys");
    if (response.ok) save(STORE.jwks, await response.json());
    const eventId = $("#event-id").value.trim();
    if (eventId && load(STORE.token, null)) {
      const data = await post("query($id: ID!) { revokedTickets(eventId: $id) }", { id: eventId });
      save(STORE.revoked, { ...load(STORE.revoked, {}), [eventId]: data.revokedTickets });
    }
  } catch (error) {
    if (!(error instanceof Offline)) console.warn("sync:", error.message);
  }
}

async function startCamera() {
  const video = $("#camera");
  video.srcObject = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } });
  video.hidden = false;
  await video.play();
  const detector = new BarcodeDetector({ formats: ["qr_code"] });
  let last = "";
  let lastAt = 0;
  setInterval(async () => {
    const [found] = await detector.detect(video).catch(() => []);
    // The same code held in front of the camera is one scan, not one per frame.
    if (found && (found.rawValue !== last || Date.now() - lastAt > 5000)) {
      last = found.rawValue;
      lastAt = Date.now();
      await scan(found.rawValue);
    }
  }, 300);
}

function signedIn() {
  $("#login-form").hidden = true;
  $("#door").hidden = false;
  sync();
}

function init() {
  const fromUrl = new URLSearchParams(location.search).get("event");
  $("#event-id").value = fromUrl || load(STORE.event, "");
  $("#gate").value = load(STORE.gate, "");
  $("#event-id").addEventListener("change", (e) => { save(STORE.event, e.target.value.trim()); sync(); });
  $("#gate").addEventListener("change", (e) => save(STORE.gate, e.target.value.trim()));
  $("#scan-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    await scan($("#code").value);
    $("#code").value = "";
    $("#code").focus();
  });
  $("#login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const data = await post(`mutation($input: LoginInput!) { login(input: $input) {
        accessToken refreshToken user { role } errors { message } } }`,
                              { input: { email: $("#login-email").value, password: $("#login-password").value } });
      const login = data.login;
      if (login.errors.length) return show(false, "ERROR", login.errors[0].message);
      save(STORE.token, login.accessToken);
      save(STORE.refresh, login.refreshToken);
      signedIn();
    } catch (error) {
      show(false, "ERROR", "Could not sign in", error.message);
    }
  });
  if ("BarcodeDetector" in window && navigator.mediaDevices) {
    $("#camera-btn").hidden = false;
    $("#camera-btn").addEventListener("click", () => startCamera().catch((error) => show(false, "ERROR", error.message)));
  }
  window.addEventListener("online", sync);
  window.addEventListener("offline", showQueue);
  setInterval(() => (load(STORE.queue, []).length ? upload().then(showQueue) : null), UPLOAD_RETRY_MS);
  setInterval(sync, SYNC_EVERY_MS);
  if (load(STORE.token, null)) signedIn();
  else $("#login-form").hidden = false;
}

init();
