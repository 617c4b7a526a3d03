"""ASGI entry point: `uvicorn tiler.main:app`."""

from tiler.app import create_app

app = create_app()
