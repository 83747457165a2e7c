"""Ingest: MQTT gateways to the raw zone (listener, raw segments, embedded broker)."""
