// GraphiQL for BookMyEvent: queries and mutations over HTTP, subscriptions over the websocket,
// the Authorization header ready to fill in (left out while it holds no token).
"use strict";

const url = new URL(window.location.pathname, window.location.href).href;

function withoutEmptyToken(input, init) {
  const headers = new Headers((init && init.headers) || {});
  if (/^\s*Bearer\s*$/i.test(headers.get("Authorization") || "")) {
    headers.delete("Authorization");
  }
  return window.fetch(input, { ...init, headers });
}

const DEFAULT_QUERY = `# Welcome to the BookMyEvent API. Run this with the ▶ button (Ctrl-Enter);
# the docs explorer (book icon, left) lists every type and field.
# To sign in: run the \`login\` mutation, then paste its accessToken after
# "Bearer " in the Headers tab below.

query UpcomingEvents {
  events(first: 5, filter: {onSaleOnly: true}) {
    totalCount
    edges {
      node { id name startsAt availableSeats priceCents currency venue { name city } }
    }
  }
}

# mutation Login {
#   login(input: {email: "you@example.com", password: "…"}) {
#     accessToken errors { code message }
#   }
# }
`;

ReactDOM.createRoot(document.getElementById("graphiql")).render(
  React.createElement(GraphiQL, {
    fetcher: GraphiQL.createFetcher({
      url,
      subscriptionUrl: url.replace(/^http/, "ws"),
      fetch: withoutEmptyToken,
    }),
    defaultQuery: DEFAULT_QUERY,
    defaultHeaders: JSON.stringify({ Authorization: "Bearer " }, null, 2),
    defaultEditorToolsVisibility: "headers",
    isHeadersEditorEnabled: true,
    shouldPersistHeaders: false,
  }),
);
