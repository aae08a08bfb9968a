"""Voice conversations: microphone in, spoken replies out, barge-in."""
