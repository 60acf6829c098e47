"""junction provider package: the HTTP client and payload parsing (client.py) and the SyncProvider (provider.py)."""
