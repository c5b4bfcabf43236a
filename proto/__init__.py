"""Cove's message contract: events, the envelope, requests, subjects and stream settings."""
