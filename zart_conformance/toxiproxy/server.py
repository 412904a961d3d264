"""The toxiproxy v2 HTTP API over the proxy engine, on aiohttp's server.

Status codes, error messages and bodies follow the real server (Shopify/toxiproxy), so the
toxiproxy clients and the kit's own tests cannot tell them apart, except for the extra keys this
server adds: ``affected`` on a toxic and ``connections`` on a proxy, which the kit uses as
evidence that a fault hit live connections.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from .proxy import STREAMS, TOXIC_ATTRIBUTES, ListenError, Proxy, Toxic

VERSION = "2.12.0"
DEFAULT_LISTEN = "127.0.0.1:0"

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answered as ``{"error": message, "status": status}``."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


BAD_BODY = "bad request body"
PROXY_NOT_FOUND = ApiError("proxy not found", 404)
PROXY_EXISTS = ApiError("proxy already exists", 409)
INVALID_STREAM = ApiError("stream was invalid, can be either upstream or downstream", 400)
INVALID_TYPE = ApiError("invalid toxic type", 400)
TOXIC_EXISTS = ApiError("toxic already exists", 409)
TOXIC_NOT_FOUND = ApiError("toxic not found", 404)


def bad_body(reason: str) -> ApiError:
    return ApiError(f"{BAD_BODY}: {reason}", 400)


def missing(field_name: str) -> ApiError:
    return ApiError(f"missing required field: {field_name}", 400)


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _json(value: object, status: int = 200) -> web.Response:
    return web.Response(text=_dumps(value), status=status, content_type="application/json")


def _error(error: ApiError) -> web.Response:
    # As Go's http.Error: text/plain, the JSON document and a newline.
    body = _dumps({"error": error.message, "status": error.status}) + "\n"
    return web.Response(text=body, status=error.status, content_type="text/plain")


def toxic_json(toxic: Toxic) -> dict[str, object]:
    return {
        "attributes": dict(toxic.attributes),
        "name": toxic.name,
        "type": toxic.type,
        "stream": toxic.stream,
        "toxicity": toxic.toxicity,
        "affected": toxic.affected,
    }


def proxy_json(proxy: Proxy) -> dict[str, object]:
    return {
        "name": proxy.name,
        "listen": proxy.listen,
        "upstream": proxy.upstream,
        "enabled": proxy.enabled,
        "toxics": [toxic_json(t) for t in proxy.ordered_toxics()],
        "connections": {"total": proxy.total_connections, "open": len(proxy.connections)},
    }


def _parse(body: bytes) -> Any:
    if not body.strip():
        raise bad_body("EOF")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise bad_body(str(exc)) from None


def _field(body: dict[str, Any], key: str, kind: type[T], default: T) -> T:
    """A field of a request body, of the JSON type the real server decodes it as."""
    value = body.get(key, default)
    if value is None:
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise bad_body(f"json: cannot unmarshal {type(value).__name__} into field {key}")
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad_body(f"json: cannot unmarshal {type(value).__name__} into {what}")
    return value


def _attributes(kind: str, given: Any, base: dict[str, int]) -> dict[str, int]:
    """``base`` with the known attributes of ``given`` applied; unknown keys are ignored."""
    result = dict(base)
    if given is None:
        return result
    for name, value in _object(given, "attributes").items():
        if name not in TOXIC_ATTRIBUTES[kind]:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad_body(f"json: cannot unmarshal {value!r} into attribute {name} (an integer)")
        result[name] = value
    return result


class ToxiproxyServer:
    """``async with ToxiproxyServer(host, port=0) as server:`` serves the API at ``server.url``."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 8474, *, seed: int | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.proxies: dict[str, Proxy] = {}
        self.rng = random.Random(seed)
        # One change at a time, as the real server's locks do: a change awaits sockets.
        self._lock = asyncio.Lock()
        app = web.Application(middlewares=[self._middleware])
        routes: list[tuple[str, str, Handler]] = [
            ("POST", "/reset", self._reset),
            ("GET", "/proxies", self._proxy_index),
            ("POST", "/proxies", self._proxy_create),
            ("POST", "/populate", self._populate),
            ("GET", "/proxies/{proxy}", self._proxy_show),
            ("POST", "/proxies/{proxy}", self._proxy_update),
            ("PATCH", "/proxies/{proxy}", self._proxy_update),
            ("DELETE", "/proxies/{proxy}", self._proxy_delete),
            ("GET", "/proxies/{proxy}/toxics", self._toxic_index),
            ("POST", "/proxies/{proxy}/toxics", self._toxic_create),
            ("GET", "/proxies/{proxy}/toxics/{toxic}", self._toxic_show),
            ("POST", "/proxies/{proxy}/toxics/{toxic}", self._toxic_update),
            ("PATCH", "/proxies/{proxy}/toxics/{toxic}", self._toxic_update),
            ("DELETE", "/proxies/{proxy}/toxics/{toxic}", self._toxic_delete),
            ("GET", "/version", self._version),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        self._runner = web.AppRunner(app, access_log=None)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        sockets = getattr(site._server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop every proxy (listeners and connections), then the API."""
        await asyncio.gather(*(proxy.stop() for proxy in self.proxies.values()))
        await self._runner.cleanup()

    async def __aenter__(self) -> ToxiproxyServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- operations shared by the API and the command line --------------------------------

    async def populate(self, specs: Any) -> list[Proxy]:
        """Create or replace proxies from a list of specs, validating all before any change."""
        if not isinstance(specs, list):
            raise bad_body(f"json: cannot unmarshal {type(specs).__name__} into proxies")
        parsed = []
        names: set[str] = set()
        for number, spec in enumerate(specs, start=1):
            name, listen, upstream, enabled = self._proxy_spec(spec, f" at proxy {number}")
            if name in names:
                raise ApiError(f'duplicate proxy name "{name}"', 500)
            names.add(name)
            parsed.append((name, listen, upstream, enabled))
        async with self._lock:
            result = []
            for name, listen, upstream, enabled in parsed:
                existing = self.proxies.get(name)
                if existing and (existing.listen, existing.upstream) == (listen, upstream):
                    result.append(existing)
                    continue
                if existing:
                    await existing.stop()
                    del self.proxies[name]
                result.append(await self._add_proxy(name, listen, upstream, enabled))
            return result

    @staticmethod
    def _proxy_spec(spec: Any, where: str = "") -> tuple[str, str, str, bool]:
        body = _object(spec, "proxy")
        name = _field(body, "name", str, "")
        listen = _field(body, "listen", str, "")
        upstream = _field(body, "upstream", str, "")
        enabled = _field(body, "enabled", bool, True)
        if not name:
            raise missing(f"name{where}")
        if not upstream:
            raise missing(f"upstream{where}")
        return name, listen or DEFAULT_LISTEN, upstream, enabled

    async def _add_proxy(self, name: str, listen: str, upstream: str, enabled: bool) -> Proxy:
        """Create a proxy (caller holds the lock); a listen error leaves no proxy behind."""
        if name in self.proxies:
            raise PROXY_EXISTS
        proxy = Proxy(name, listen, upstream, self.rng)
        if enabled:
            await _started(proxy.start())
        self.proxies[name] = proxy
        return proxy

    def _proxy(self, request: web.Request) -> Proxy:
        proxy = self.proxies.get(request.match_info["proxy"])
        if proxy is None:
            raise PROXY_NOT_FOUND
        return proxy

    def _toxic(self, request: web.Request) -> tuple[Proxy, Toxic]:
        proxy = self._proxy(request)
        toxic = proxy.toxics.get(request.match_info["toxic"])
        if toxic is None:
            raise TOXIC_NOT_FOUND
        return proxy, toxic

    # -- HTTP ----------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.headers.get("User-Agent", "").startswith("Mozilla/"):
            return web.Response(status=403, text="User agent not allowed\n")
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(exc)
        except web.HTTPNotFound:
            return web.Response(status=404, text="404 page not found\n")
        except web.HTTPMethodNotAllowed:
            return web.Response(status=405)

    async def _reset(self, request: web.Request) -> web.Response:
        async with self._lock:
            for proxy in self.proxies.values():
                await _started(proxy.start())
                await proxy.remove_all_toxics()
        return web.Response(status=204)

    async def _proxy_index(self, request: web.Request) -> web.Response:
        return _json({name: proxy_json(proxy) for name, proxy in self.proxies.items()})

    async def _proxy_create(self, request: web.Request) -> web.Response:
        spec = self._proxy_spec(_parse(await request.read()))
        async with self._lock:
            proxy = await self._add_proxy(*spec)
        return _json(proxy_json(proxy), status=201)

    async def _populate(self, request: web.Request) -> web.Response:
        try:
            proxies = await self.populate(_parse(await request.read()))
        except ApiError as exc:
            # The real server answers this one as plain JSON, with no newline.
            body = {"error": exc.message, "status": exc.status, "proxies": []}
            return _json(body, status=exc.status)
        return _json({"proxies": [proxy_json(p) for p in proxies]}, status=201)

    async def _proxy_show(self, request: web.Request) -> web.Response:
        return _json(proxy_json(self._proxy(request)))

    async def _proxy_update(self, request: web.Request) -> web.Response:
        proxy = self._proxy(request)
        body = _object(_parse(await request.read()), "proxy")
        listen = _field(body, "listen", str, proxy.listen)
        upstream = _field(body, "upstream", str, proxy.upstream)
        enabled = _field(body, "enabled", bool, proxy.enabled)
        async with self._lock:
            await _started(proxy.update(listen, upstream, enabled))
        return _json(proxy_json(proxy))

    async def _proxy_delete(self, request: web.Request) -> web.Response:
        async with self._lock:
            proxy = self.proxies.pop(self._proxy(request).name)
            await proxy.stop()
        return web.Response(status=204)

    async def _toxic_index(self, request: web.Request) -> web.Response:
        return _json([toxic_json(t) for t in self._proxy(request).ordered_toxics()])

    async def _toxic_create(self, request: web.Request) -> web.Response:
        proxy = self._proxy(request)
        body = _object(_parse(await request.read()), "toxic")
        kind = _field(body, "type", str, "")
        stream = _field(body, "stream", str, "downstream")
        toxicity = _field(body, "toxicity", float, 1.0)
        name = _field(body, "name", str, "") or f"{kind}_{stream}"
        if stream.lower() not in STREAMS:
            raise INVALID_STREAM
        if kind not in TOXIC_ATTRIBUTES:
            raise INVALID_TYPE
        async with self._lock:
            if name in proxy.toxics:
                raise TOXIC_EXISTS
            zero = dict.fromkeys(TOXIC_ATTRIBUTES[kind], 0)
            attributes = _attributes(kind, body.get("attributes"), zero)
            toxic = Toxic(name, kind, stream, toxicity, attributes)
            await proxy.add_toxic(toxic)
        return _json(toxic_json(toxic))

    async def _toxic_show(self, request: web.Request) -> web.Response:
        return _json(toxic_json(self._toxic(request)[1]))

    async def _toxic_update(self, request: web.Request) -> web.Response:
        body = _object(_parse(await request.read()), "toxic")
        async with self._lock:
            proxy, toxic = self._toxic(request)
            toxicity = _field(body, "toxicity", float, toxic.toxicity)
            toxic.attributes = _attributes(toxic.type, body.get("attributes"), toxic.attributes)
            toxic.toxicity = toxicity
            await proxy.update_toxic(toxic)
        return _json(toxic_json(toxic))

    async def _toxic_delete(self, request: web.Request) -> web.Response:
        async with self._lock:
            proxy, toxic = self._toxic(request)
            await proxy.remove_toxic(toxic)
        return web.Response(status=204)

    async def _version(self, request: web.Request) -> web.Response:
        body = f'{{"version": "{VERSION}"}}\n'
        return web.Response(text=body, content_type="application/json", charset="utf-8")


async def _started(operation: Awaitable[None]) -> None:
    """Run a proxy operation that may listen; a listen failure is the API's 500."""
    try:
        await operation
    except ListenError as exc:
        raise ApiError(str(exc), 500) from None
