"""A Hugging Face Hub stand-in on 127.0.0.1, and a plain file server for URL LoRA sources.

It answers the requests huggingface_hub makes for ``model_info``, ``list_repo_files`` /
``list_repo_tree``, ``hf_hub_download`` and ``snapshot_download`` (read from huggingface_hub's
``hf_api.py`` and ``file_download.py``):

* ``GET /api/models/{repo}[/revision/{rev}]``: model info with ``sha`` and ``siblings``;
* ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=&expand=&cursor=``: paginated with a
  ``Link: <...>; rel="next"`` header, LFS files carry ``lfs.oid`` (sha256);
* ``HEAD|GET /{repo}/resolve/{rev}/{path}``: small files answer 200 with ``ETag`` (git blob sha1),
  ``X-Repo-Commit`` and ``Content-Length``; LFS files answer 302 to ``/cdn/{sha256}`` with
  ``X-Linked-Etag`` / ``X-Linked-Size``, as the real Hub redirects to its CDN;
* ``GET /cdn/{sha256}`` on a second port (another origin, as the real CDN is): the bytes, honouring
  ``Range: bytes=N-`` (resumed downloads).

Errors carry ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound) so huggingface_hub
raises its own typed exceptions. Private repositories need ``Authorization: Bearer <token>``.
Every request is logged; a file can be made to stall mid-body (to interrupt a download) or fail.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlencode

from aiohttp import web

LFS_SUFFIXES = (".bin", ".safetensors", ".onnx", ".ckpt", ".pt", ".msgpack", ".h5")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, bytes]
    sha: str
    private: bool = False

    def is_lfs(self, path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)

    def directories(self) -> list[str]:
        dirs: set[str] = set()
        for path in self.files:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        return sorted(dirs)


def files_from_dir(root: Path, *, exclude: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file under ``root`` keyed by its posix path relative to ``root``."""
    out: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not any(rel == e or rel.startswith(e + "/") for e in exclude):
            out[rel] = path.read_bytes()
    return out


class BackgroundServer:
    """An aiohttp application served on 127.0.0.1:<free port> from its own thread and event loop."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-server", daemon=True)
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, coro: Awaitable[object]) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)  # type: ignore[arg-type]

    def start(self) -> BackgroundServer:
        self.thread.start()

        async def start() -> None:
            self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = self.runner.addresses[0][1]

        self.call(start())
        return self

    def stop(self) -> None:
        if self.runner is not None:
            self.call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class FakeHub:
    """The Hub's state; ``start()`` serves it. Mutate repos and faults from the test thread."""

    repos: dict[str, FakeRepo] = field(default_factory=dict)
    token: str = "hf_fake_token_for_tests"
    page_size: int = 1000
    requests: list[Request] = field(default_factory=list)
    # path in repo -> bytes to send before the response stalls (until ``release()``)
    stall_after: dict[str, int] = field(default_factory=dict)
    # path in repo -> HTTP status the file's GET (not its HEAD) answers instead of the bytes
    fail: dict[str, int] = field(default_factory=dict)
    server: BackgroundServer | None = None
    cdn: BackgroundServer | None = None
    released: threading.Event = field(default_factory=threading.Event)
    stalled: threading.Event = field(default_factory=threading.Event)

    # ----- state -----
    def add_repo(self, repo_id: str, files: dict[str, bytes], *, private: bool = False) -> FakeRepo:
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
        repo = FakeRepo(repo_id, dict(files), digest.hexdigest(), private)
        self.repos[repo_id] = repo
        return repo

    def by_sha256(self, sha: str) -> tuple[FakeRepo, str] | None:
        for repo in self.repos.values():
            for path, data in repo.files.items():
                if hashlib.sha256(data).hexdigest() == sha:
                    return repo, path
        return None

    def calls(self, prefix: str = "") -> list[str]:
        """``METHOD path`` of every request whose path starts with ``prefix``."""
        return [f"{r.method} {r.path}" for r in self.requests if r.path.startswith(prefix)]

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    @property
    def cdn_url(self) -> str:
        assert self.cdn is not None
        return self.cdn.url

    def release(self) -> None:
        """Let stalled responses finish (they then send the rest of the file)."""
        self.stall_after.clear()
        self.released.set()

    # ----- serving -----
    def start(self) -> FakeHub:
        app = web.Application(middlewares=[self._log])
        app.router.add_get("/api/models/{org}/{name}", self._info)
        app.router.add_get("/api/models/{org}/{name}/revision/{rev}", self._info)
        app.router.add_get("/api/models/{org}/{name}/tree/{rev}", self._tree)
        app.router.add_get("/api/models/{org}/{name}/tree/{rev}/{path:.+}", self._tree)
        app.router.add_route("HEAD", "/{org}/{name}/resolve/{rev}/{path:.+}", self._resolve)
        app.router.add_get("/{org}/{name}/resolve/{rev}/{path:.+}", self._resolve, allow_head=False)
        self.server = BackgroundServer(app).start()
        # The real Hub redirects LFS files to a CDN on another host; huggingface_hub follows
        # same-origin redirects during its HEAD call, so the CDN must be another origin here too.
        cdn = web.Application(middlewares=[self._log])
        cdn.router.add_get("/cdn/{sha}", self._cdn)
        self.cdn = BackgroundServer(cdn).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.release()
            self.server.stop()
        if self.cdn is not None:
            self.cdn.stop()

    @web.middleware
    async def _log(self, request: web.Request,
                   handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        self.requests.append(Request(request.method, request.path_qs, dict(request.headers)))
        return await handler(request)

    def _error(self, status: int, code: str, message: str, repo: FakeRepo | None = None) -> web.Response:
        headers = {"X-Error-Code": code, "X-Error-Message": message}
        if repo is not None:
            headers["X-Repo-Commit"] = repo.sha
        return web.json_response({"error": message}, status=status, headers=headers)

    def _repo(self, request: web.Request) -> FakeRepo | web.Response:
        repo_id = f"{request.match_info['org']}/{request.match_info['name']}"
        repo = self.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        if repo.private and request.headers.get("Authorization") != f"Bearer {self.token}":
            # The real Hub does not reveal private repositories: 401 + RepoNotFound.
            return self._error(401, "RepoNotFound", "Invalid username or password.")
        rev = request.match_info.get("rev")
        if rev is not None and rev not in ("main", repo.sha):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return repo

    async def _info(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        if isinstance(repo, web.Response):
            return repo
        return web.json_response({
            "_id": repo.sha[:24], "id": repo.repo_id, "modelId": repo.repo_id, "author": repo.repo_id.split("/")[0],
            "sha": repo.sha, "private": repo.private, "gated": False, "disabled": False, "downloads": 0,
            "likes": 0, "tags": ["diffusers"], "library_name": "diffusers",
            "lastModified": "2025-06-11T00:00:00.000Z", "createdAt": "2025-06-11T00:00:00.000Z",
            "siblings": [{"rfilename": path} for path in sorted(repo.files)],
        })

    async def _tree(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        if isinstance(repo, web.Response):
            return repo
        base = request.match_info.get("path", "").strip("/")
        recursive = request.query.get("recursive", "false").lower() == "true"
        entries: list[dict[str, object]] = []
        for d in repo.directories():
            entries.append({"type": "directory", "oid": git_blob_sha1(d.encode()), "size": 0, "path": d})
        for path, data in sorted(repo.files.items()):
            entry: dict[str, object] = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": path}
            if repo.is_lfs(path):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)

        def inside(path: str) -> bool:
            if base and not path.startswith(base + "/"):
                return False
            rest = path[len(base) + 1:] if base else path
            return recursive or "/" not in rest

        entries = sorted((e for e in entries if inside(str(e["path"]))), key=lambda e: str(e["path"]))
        start = int(request.query.get("cursor", "0"))
        page = entries[start:start + self.page_size]
        headers = {}
        if start + self.page_size < len(entries):
            query = dict(request.query)
            query["cursor"] = str(start + self.page_size)
            headers["Link"] = f'<{self.url}{request.path}?{urlencode(query)}>; rel="next"'
        return web.json_response(page, headers=headers)

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        repo = self._repo(request)
        if isinstance(repo, web.Response):
            return repo
        path = request.match_info["path"]
        data = repo.files.get(path)
        if data is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist on \"main\"", repo)
        if path in self.fail and request.method == "GET" and not repo.is_lfs(path):
            return self._error(self.fail[path], "InternalError", "simulated failure", repo)
        etag = f'"{git_blob_sha1(data)}"'
        headers = {"X-Repo-Commit": repo.sha, "ETag": etag, "Accept-Ranges": "bytes"}
        if repo.is_lfs(path):
            sha = hashlib.sha256(data).hexdigest()
            headers.update({"X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)),
                            "Location": f"{self.cdn_url}/cdn/{sha}?filename={quote(path.rsplit('/', 1)[-1])}"})
            return web.Response(status=302, headers=headers)
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(data))
            response = web.StreamResponse(status=200, headers=headers)
            response.content_length = len(data)
            await response.prepare(request)
            return response
        return await self._send(request, path, data, headers)

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        found = self.by_sha256(request.match_info["sha"])
        if found is None:
            return web.Response(status=404, text="no such object")
        repo, path = found
        if path in self.fail:
            return web.Response(status=self.fail[path], text="simulated failure")
        return await self._send(request, path, repo.files[path], {"ETag": f'"{request.match_info["sha"]}"'})

    async def _send(self, request: web.Request, path: str, data: bytes, headers: dict[str, str]
                    ) -> web.StreamResponse:
        start = 0
        status = 200
        range_header = request.headers.get("Range", "")
        if range_header.startswith("bytes=") and range_header.endswith("-"):
            start = int(range_header[len("bytes="):-1])
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        body = data[start:]
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(body)
        response.content_type = "application/octet-stream"
        await response.prepare(request)
        stall = self.stall_after.get(path)
        if stall is not None:
            await response.write(body[:stall])
            self.stalled.set()
            while not self.released.is_set():
                await asyncio.sleep(0.05)
            body = body[stall:]
        await response.write(body)
        await response.write_eof()
        return response


@dataclass
class FileServer:
    """Plain HTTP for URL sources: ``/files/{name}`` (with Content-Length) and ``/moved/{name}`` (302)."""

    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    server: BackgroundServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def start(self) -> FileServer:
        app = web.Application()
        app.router.add_get("/files/{name}", self._file)
        app.router.add_get("/moved/{name}", self._moved)
        self.server = BackgroundServer(app).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    async def _file(self, request: web.Request) -> web.Response:
        self.requests.append(request.path_qs)
        data = self.files.get(request.match_info["name"])
        if data is None:
            return web.Response(status=404, text="not found")
        return web.Response(body=data, content_type="application/octet-stream")

    async def _moved(self, request: web.Request) -> web.Response:
        self.requests.append(request.path_qs)
        raise web.HTTPFound(f"/files/{quote(request.match_info['name'])}")
