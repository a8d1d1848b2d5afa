// Standard GraphQL clients against a running BookMyEvent: Apollo Client (query, mutation,
// automatic persisted queries over GET), graphql-ws (websocket subscription) and graphql-sse
// (Server-Sent Events subscription). Usage: BME_URL=http://127.0.0.1:8000 BME_EVENT_ID=1 node check.mjs
// The event must be on sale with at least 2 general-admission places. Exits non-zero on any failure.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";

import { ApolloClient, HttpLink, InMemoryCache, gql } from "@apollo/client";
import { PersistedQueryLink } from "@apollo/client/link/persisted-queries";
import { createClient as createSseClient } from "graphql-sse";
import { createClient as createWsClient } from "graphql-ws";
import WebSocket from "ws";

const base = process.env.BME_URL;
const eventId = process.env.BME_EVENT_ID;
assert.ok(base && eventId, "set BME_URL and BME_EVENT_ID");
const url = `${base}/graphql`;
// Only turns a hang into a failure; everything below ends far sooner when all is well.
setTimeout(() => { console.error("FAIL: timed out"); process.exit(1); }, 60_000).unref();

const requests = []; // what Apollo sent: method, and whether the document text went along
async function recordingFetch(input, init = {}) {
  const method = init.method ?? "GET";
  const target = new URL(String(input));
  const withText = method === "GET" ? target.searchParams.has("query") : "query" in JSON.parse(init.body);
  requests.push(`${method} ${withText ? "text" : "hash"}`);
  return fetch(input, init);
}

function apollo(headers = {}) {
  return new ApolloClient({ link: new HttpLink({ uri: url, headers, fetch: recordingFetch }), cache: new InMemoryCache() });
}

async function untilSeats(iterator, seats) {
  for (;;) {
    const { value, done } = await iterator.next();
    assert.ok(!done, "subscription ended early");
    assert.equal(value.errors, undefined, JSON.stringify(value.errors));
    if (value.data.eventAvailability.availableSeats === seats) return value.data.eventAvailability;
  }
}

// A query and a mutation (Apollo Client over HTTP).
const anonymous = apollo();
const { data: read } = await anonymous.query({
  query: gql`query Event($id: ID!) { event(id: $id) { id name availableSeats version } }`,
  variables: { id: eventId },
});
assert.equal(read.event.id, eventId);
const before = read.event.availableSeats;
assert.ok(before >= 2, "the event needs 2 free places");
const { data: registered } = await anonymous.mutate({
  mutation: gql`mutation Register($input: RegisterInput!) {
    register(input: $input) { accessToken user { email } errors { code message } } }`,
  variables: { input: { email: `client-${Date.now()}@example.com`, password: "correct horse battery", name: "Client" } },
});
assert.deepEqual(registered.register.errors, []);
const token = registered.register.accessToken;
console.log("ok: query and mutation (Apollo Client)");

// The same subscription over a websocket (graphql-ws) and over SSE (graphql-sse).
const AVAILABILITY = "subscription($id: ID!) { eventAvailability(eventId: $id) { availableSeats version snapshot } }";
const ws = createWsClient({ url: url.replace(/^http/, "ws"), webSocketImpl: WebSocket,
                            connectionParams: { authorization: `Bearer ${token}` } });
const sse = createSseClient({ url, headers: { Authorization: `Bearer ${token}` } });
const overWs = ws.iterate({ query: AVAILABILITY, variables: { id: eventId } });
const overSse = sse.iterate({ query: AVAILABILITY, variables: { id: eventId } });
for (const first of [await untilSeats(overWs, before), await untilSeats(overSse, before)]) {
  assert.equal(first.snapshot, true);
}
const { data: reserved } = await apollo({ Authorization: `Bearer ${token}` }).mutate({
  mutation: gql`mutation Reserve($input: ReserveInput!) {
    reserveSeats(input: $input) { booking { id status } errors { code message } } }`,
  variables: { input: { eventId, quantity: 2 } },
});
assert.deepEqual(reserved.reserveSeats.errors, []);
assert.equal(reserved.reserveSeats.booking.status, "PENDING");
for (const update of [await untilSeats(overWs, before - 2), await untilSeats(overSse, before - 2)]) {
  assert.equal(update.snapshot, false);
  assert.ok(update.version > read.event.version);
}
await overWs.return();
await overSse.return();
await ws.dispose();
sse.dispose();
console.log("ok: subscriptions over graphql-ws and graphql-sse");

// Automatic persisted queries, hashed queries over GET: a new document is first sent as a
// hash (unknown), then with its text; after that its hash alone is enough.
const persisted = () => new ApolloClient({
  link: new PersistedQueryLink({ sha256: (text) => createHash("sha256").update(text).digest("hex"),
                                 useGETForHashedQueries: true })
    .concat(new HttpLink({ uri: url, fetch: recordingFetch })),
  cache: new InMemoryCache(),
});
const document = gql(`query Catalogue${Date.now()}($id: ID!) { event(id: $id) { id name } }`);
requests.length = 0;
for (const client of [persisted(), persisted()]) {
  const { data } = await client.query({ query: document, variables: { id: eventId } });
  assert.equal(data.event.name, read.event.name);
}
assert.deepEqual(requests, ["GET hash", "POST text", "GET hash"]);
console.log("ok: automatic persisted queries (Apollo Client)");
