"""The console's static files (`/ui/`), shipped inside the package (`console/`).

The page is public and holds no data: it asks the JSON API for everything, with the token
the person types. Files are read once, at start, into a fixed table, so a request can
only ever name one of them (no path from a request reaches the file system). Every answer
carries a strict Content-Security-Policy: scripts only from this origin and never inline,
requests only to this origin, no frames, no plugins.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

from aiohttp import web

ASSETS = "console"
TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
          "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def load() -> dict[str, tuple[bytes, str]]:
    """Every asset by its path under `ui/` ("" is the page itself)."""
    root = resources.files(__package__).joinpath(ASSETS)
    files: dict[str, tuple[bytes, str]] = {}

    def walk(folder: Traversable, prefix: str) -> None:
        for item in folder.iterdir():
            if item.is_dir():
                walk(item, f"{prefix}{item.name}/")
            else:
                suffix = item.name[item.name.rfind("."):]
                if suffix in TYPES:
                    files[prefix + item.name] = (item.read_bytes(), TYPES[suffix])

    walk(root, "")
    files[""] = files["index.html"]
    return files


class Console:
    """The handlers of `/ui` (a redirect to `ui/`, so relative links resolve) and `/ui/*`."""

    PREFIX = "/ui/"

    def __init__(self) -> None:
        self.files = load()

    async def redirect(self, request: web.BaseRequest) -> web.Response:
        # Relative, so it also works behind a path prefix or a port-forward.
        return web.Response(status=308, headers={"Location": "ui/", **HEADERS})

    async def asset(self, request: web.BaseRequest) -> web.Response:
        found = self.files.get(request.raw_path.partition("?")[0][len(self.PREFIX):])
        if found is None:
            raise web.HTTPNotFound()
        body, content_type = found
        return web.Response(body=body, headers={"Content-Type": content_type, **HEADERS})
