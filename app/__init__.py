"""BookMyEvent: ticket booking for events with limited places."""
