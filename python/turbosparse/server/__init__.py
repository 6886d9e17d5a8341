"""`turbosparse serve`: an OpenAI-compatible HTTP server over the engine (the `server` extra: FastAPI, uvicorn,
sse-starlette). The runtime never imports this package."""

from turbosparse.server.app import create_app
from turbosparse.server.config import ServerConfig

__all__ = ["ServerConfig", "create_app"]
