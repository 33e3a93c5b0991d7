"""Serving: one ASGI app (HTTP + WebSocket + web page) over the streaming runtime, run by uvicorn or as a Ray Serve deployment."""
