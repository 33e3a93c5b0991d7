"""Serving: the aiohttp WebSocket/HTTP server over the streaming runtime, and its web page."""
