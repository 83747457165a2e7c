"""The open-data portal and consumer API: read-only, over the latest published release only."""
