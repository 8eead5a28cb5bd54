"""A fake Elasticsearch that speaks the real HTTP API the exporter uses, over real HTTP.

- ``GET /``: the cluster info document.
- ``PUT/GET /_index_template/<name>``: stores and returns composable index templates.
- ``POST /_bulk``: NDJSON in; the real response shape out (``took``, ``errors``,
  ``items: [{"create": {"_index", "_id", "status", "result" | "error": {"type",
  "reason"}}}]``). Data-stream rules: only ``create`` is allowed, ``@timestamp`` is
  required, a duplicate ``_id`` is a 409 ``version_conflict_engine_exception``.
- ``filter_path`` (comma-separated dotted patterns, ``*`` matching one field name,
  arrays filtered element by element) trims ``_bulk`` responses as Elasticsearch does.
- Every response carries ``X-Elastic-Product: Elasticsearch``.
- Per-item failures can be injected (``inject(429, 400, 503, ...)``: the next items get
  those statuses), and the server can be stopped and started again on the same port.
"""

from __future__ import annotations

import base64
import fnmatch
import ipaddress
import ssl
import time
from collections import Counter, deque
from typing import Any

import orjson
from aiohttp import web

PRODUCT = {"X-Elastic-Product": "Elasticsearch"}
ERROR_TYPES = {
    429: "es_rejected_execution_exception",
    400: "document_parsing_exception",
    401: "security_exception",
    403: "security_exception",  # e.g. a missing index privilege, reported per item
    404: "index_not_found_exception",  # a data stream missing and not auto-created
    500: "internal_server_error",
    503: "unavailable_shards_exception",
}


class FakeElasticsearch:
    """In-memory Elasticsearch; ``documents[data_stream][_id]`` holds what was stored."""

    def __init__(self, api_key: str = "") -> None:
        self.documents: dict[str, dict[str, dict[str, Any]]] = {}
        self.templates: dict[str, dict[str, Any]] = {}
        self.creates: Counter[str] = Counter()  # successful creates per _id (must stay 1)
        self.bulk_requests = 0
        self.item_statuses: Counter[int] = Counter()
        self.api_key = api_key
        self.basic_auth: tuple[str, str] | None = None  # (user, password) required when set
        self.refused = 0  # requests answered 401 (missing or wrong credentials)
        self.scheme = "http"
        self._inject: deque[int] = deque()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def inject(self, *statuses: int) -> None:
        """The next bulk items (in order) fail with these statuses instead of being stored."""
        self._inject.extend(statuses)

    def stored(self, data_stream: str) -> dict[str, dict[str, Any]]:
        return self.documents.get(data_stream, {})

    async def start(
        self, port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> FakeElasticsearch:
        """Listen on 127.0.0.1 (``port`` 0: any; pass the old port to come back); HTTPS
        with ``ssl_context``."""
        self.scheme = "https" if ssl_context else "http"
        # http.max_content_length of Elasticsearch is 100 MB (aiohttp's default is 1 MB).
        app = web.Application(middlewares=[self._product_header], client_max_size=100 << 20)
        app.router.add_get("/", self._info)
        app.router.add_put("/_index_template/{name}", self._put_template)
        app.router.add_get("/_index_template/{name}", self._get_template)
        app.router.add_post("/_bulk", self._bulk)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            "127.0.0.1",
            port or self.port,
            reuse_address=True,
            ssl_context=ssl_context,
        )
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------ handlers

    @web.middleware
    async def _product_header(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not self._authorized(request.headers.get("Authorization", "")):
            self.refused += 1
            response: web.StreamResponse = _json(
                {
                    "error": {
                        "type": "security_exception",
                        "reason": "missing authentication credentials",
                    },
                    "status": 401,
                },
                401,
            )
        else:
            try:
                response = await handler(request)
            except web.HTTPException as e:  # aiohttp's own errors (413, 404, 405) too
                response = web.Response(status=e.status, text=e.text, headers=e.headers)
        response.headers.update(PRODUCT)
        return response

    def _authorized(self, header: str) -> bool:
        if self.api_key:
            return header == f"ApiKey {self.api_key}"
        if self.basic_auth:
            user, password = self.basic_auth
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            return header == f"Basic {token}"
        return True

    async def _info(self, request: web.Request) -> web.Response:
        return _json(
            {
                "name": "fake-es",
                "cluster_name": "flowscope-test",
                "version": {"number": "8.15.0", "build_flavor": "default"},
                "tagline": "You Know, for Search",
            }
        )

    async def _put_template(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        if not isinstance(body.get("index_patterns"), list):
            return _error(400, "action_request_validation_exception", "index patterns are missing")
        self.templates[request.match_info["name"]] = body
        return _json({"acknowledged": True})

    async def _get_template(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.templates:
            return _error(
                404, "resource_not_found_exception", f"index template matching [{name}] not found"
            )
        return _json({"index_templates": [{"name": name, "index_template": self.templates[name]}]})

    async def _bulk(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        if request.content_type not in ("application/x-ndjson", "application/json"):
            return _error(406, "media_type_header_exception", "bad Content-Type")
        lines = (await request.read()).splitlines()
        if lines and not lines[-1]:
            lines.pop()
        if len(lines) % 2:
            return _error(
                400,
                "illegal_argument_exception",
                "The bulk request must be terminated by a newline [\\n]",
            )
        self.bulk_requests += 1
        try:
            items = [
                self._item(orjson.loads(lines[i]), orjson.loads(lines[i + 1]))
                for i in range(0, len(lines), 2)
            ]
        except orjson.JSONDecodeError as e:
            return _error(400, "x_content_parse_exception", str(e))
        errors = any("error" in next(iter(item.values())) for item in items)
        took = int((time.monotonic() - started) * 1000)
        answer: Any = {"took": took, "errors": errors, "items": items}
        if "filter_path" in request.query:
            patterns = [p.split(".") for p in request.query["filter_path"].split(",") if p]
            answer = filtered(answer, patterns) or {}
        return _json(answer)

    def _item(self, action: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
        op, meta = next(iter(action.items()))
        index, doc_id = meta.get("_index", ""), meta.get("_id", "")
        backing = f".ds-{index}-{time.strftime('%Y.%m.%d')}-000001"
        head = {"_index": backing, "_id": doc_id}
        if self._inject:
            return self._failed(op, head, self._inject.popleft(), "injected failure")
        if op != "create":
            return self._failed(
                op,
                head,
                400,
                "only write ops with an op_type of create are allowed in data streams",
                "illegal_argument_exception",
            )
        if "@timestamp" not in doc:
            return self._failed(
                op, head, 400, "data stream timestamp field [@timestamp] is missing"
            )
        bad_field = self._unparsable_ip(index, doc)
        if bad_field:
            return self._failed(
                op,
                head,
                400,
                f"failed to parse field [{bad_field}] of type [ip] in document with id '{doc_id}'",
            )
        stream = self.documents.setdefault(index, {})
        if doc_id in stream:
            return self._failed(
                op,
                head,
                409,
                f"[{doc_id}]: version conflict, document already exists (current version [1])",
                "version_conflict_engine_exception",
            )
        stream[doc_id] = doc
        self.creates[doc_id] += 1
        self.item_statuses[201] += 1
        return {
            op: {
                **head,
                "_version": 1,
                "result": "created",
                "_shards": {"total": 1, "successful": 1, "failed": 0},
                "_seq_no": len(stream) - 1,
                "_primary_term": 1,
                "status": 201,
            }
        }

    def _unparsable_ip(self, index: str, doc: dict[str, Any]) -> str:
        """The first field mapped as ``ip`` (by a template matching ``index``) that is no IP."""
        for template in self.templates.values():
            if not any(fnmatch.fnmatchcase(index, p) for p in template.get("index_patterns", ())):
                continue
            props = template.get("template", {}).get("mappings", {}).get("properties", {})
            for name, kind in _flatten(props):
                if kind == "ip" and name in doc:
                    try:
                        ipaddress.ip_address(doc[name])
                    except ValueError:
                        return name
        return ""

    def _failed(
        self, op: str, head: dict[str, Any], status: int, reason: str, kind: str = ""
    ) -> dict[str, Any]:
        self.item_statuses[status] += 1
        error = {
            "type": kind or ERROR_TYPES.get(status, "exception"),
            "reason": reason,
            "index": head["_index"],
        }
        return {op: {**head, "status": status, "error": error}}


def _flatten(properties: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Mapping ``properties`` → (dotted field, type) pairs."""
    out = []
    for name, spec in properties.items():
        if "properties" in spec:
            out.extend(_flatten(spec["properties"], f"{prefix}{name}."))
        else:
            out.append((f"{prefix}{name}", spec.get("type", "")))
    return out


def filtered(node: Any, patterns: list[list[str]]) -> Any:
    """Elasticsearch's response filtering: only the fields a dotted pattern reaches
    (``*`` and other wildcards match within one field name; arrays are transparent).
    None when nothing matched (Elasticsearch then leaves the field out)."""
    if any(not p for p in patterns):  # a pattern ended here: all of this node
        return node
    if isinstance(node, list):
        kept = [filtered(v, patterns) for v in node]
        return [v for v in kept if v is not None] or None
    if not isinstance(node, dict):
        return None
    out = {}
    for key, value in node.items():
        rest = [p[1:] for p in patterns if fnmatch.fnmatchcase(key, p[0])]
        if rest:
            kept = filtered(value, rest)
            if kept is not None:
                out[key] = kept
    return out or None


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _error(status: int, kind: str, reason: str) -> web.Response:
    return _json(
        {
            "error": {
                "root_cause": [{"type": kind, "reason": reason}],
                "type": kind,
                "reason": reason,
            },
            "status": status,
        },
        status,
    )
