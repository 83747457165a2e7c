"""Civicflow: smart-city sensor readings from MQTT to quality-checked open data."""

__version__ = "0.1.0"
