"""Serve redirects and the REST API as one ASGI app."""
