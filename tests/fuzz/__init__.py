"""Fuzzing Civicflow's ingestion end to end: hostile MQTT messages through a real Mosquitto, the real
listener, staging and the quality gate, with every reading accounted for (docs/fuzzing.md).

`python -m tests.fuzz` is the deep run (`make fuzz`); the tests in this package are the bounded one.
"""
