"""Cross-process tests: real OS processes (fork and spawn) against a real redis-server."""
