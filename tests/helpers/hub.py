"""A loopback stand-in for the Hugging Face Hub's file endpoints, for tests with no internet.

`huggingface_hub.hf_hub_download` talks to `{HF_ENDPOINT}/{repo}/resolve/{revision}/{file}`:

- a HEAD that must answer with `X-Repo-Commit` (the commit the revision points to) and an
  `ETag`; for large (LFS) files the Hub answers `302` with `Location` on a storage host plus
  `X-Linked-Etag` (the file's sha256) and `X-Linked-Size`, and the client does not follow a
  redirect to another host: it takes the metadata from the 302 itself;
- a GET of that `Location` for the bytes, whose length must equal the announced size.

Errors carry `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`,
`GatedRepo`), which the client turns into its typed exceptions. `FakeHub` serves files on
127.0.0.1 at a random port and sends LFS bytes from `localhost` on the same port: a different
origin to the client, so the redirect path is the one real LFS downloads take.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

COMMIT_LENGTH = 40  # hex digits of a git commit id


@dataclass
class HubFile:
    data: bytes                  # the file's bytes
    lfs: bool = True             # served through a 302 to the storage host, like LFS files
    corrupt: bool = False        # announce the true size and sha256, send other bytes
    cut_downloads: int = 0       # this many next downloads stop half-way and drop the line

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def git_oid(self) -> str:
        # Git's blob id: what the Hub sends as ETag for small (non-LFS) files.
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()


@dataclass
class HubRepo:
    commit: str                                   # the commit `main` points to
    files: dict[str, HubFile] = field(default_factory=dict)
    gated: bool = False                           # needs `Authorization: Bearer <token>`
    token: str = "hf_test_token"                  # the token that opens a gated repo


class FakeHub:
    """A threaded HTTP server answering the Hub's resolve requests; use as a context manager.

    `requests` logs (method, path, had_auth) for every request, so tests can count downloads.
    `head_delay_s` stalls every HEAD, to exercise client timeouts.
    """

    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.requests: list[tuple[str, str, bool]] = []
        self.resumed_downloads = 0  # downloads answered from a byte offset (Range: bytes=N-)
        self.head_delay_s = 0.0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- content ---------------------------------------------------------------------------

    def add_file(self, repo_id: str, filename: str, data: bytes, *, lfs: bool = True,
                 corrupt: bool = False, gated: bool = False) -> HubFile:
        repo = self.repos.get(repo_id)
        if repo is None:
            commit = hashlib.sha1(repo_id.encode()).hexdigest()[:COMMIT_LENGTH]
            repo = self.repos[repo_id] = HubRepo(commit=commit)
        repo.gated = repo.gated or gated
        repo.files[filename] = HubFile(data, lfs=lfs, corrupt=corrupt)
        return repo.files[filename]

    def count(self, method: str, needle: str = "") -> int:
        """How many `method` requests had `needle` in their path."""
        with self._lock:
            return sum(1 for m, p, _ in self.requests if m == method and needle in p)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the hub first"
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage(self) -> str:
        # Same server, another origin as far as the client can tell (host name differs).
        return f"http://localhost:{self.port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="fake-hub")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    fake_hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass  # keep pytest output clean

    def do_HEAD(self) -> None:  # noqa: N802 - http.server naming
        self._answer(send_body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(send_body=True)

    # ---------------------------------------------------------------------------------------

    def _answer(self, send_body: bool) -> None:
        hub = self.fake_hub
        path = unquote(urlsplit(self.path).path)
        auth = self.headers.get("Authorization", "")
        with hub._lock:
            hub.requests.append((self.command, path, bool(auth)))
        if self.command == "HEAD" and hub.head_delay_s:
            time.sleep(hub.head_delay_s)
        if path.startswith("/lfs/"):
            return self._send_lfs(path[len("/lfs/"):], send_body)
        parts = path.strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error(404, "RepoNotFound", "Repository not found")
        repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        repo = hub.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        if repo.gated and auth != f"Bearer {repo.token}":
            if auth:
                return self._error(403, "GatedRepo", "Access to this gated model is not "
                                   "granted to your account")
            return self._error(401, "GatedRepo", "Access to this model is restricted; "
                               "please log in", commit=repo.commit)
        if revision not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        f = repo.files.get(filename)
        if f is None:
            return self._error(404, "EntryNotFound", "Entry not found", commit=repo.commit)
        headers = {"X-Repo-Commit": repo.commit}
        if f.lfs:
            headers.update({"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(len(f.data)),
                            "ETag": f'"{f.git_oid}"', "Location": f"{hub.storage}/lfs/"
                            f"{repo_id}/{f.sha256}", "Content-Length": "0"})
            self.send_response(302)
            self._headers(headers)
            return
        headers.update({"ETag": f'"{f.git_oid}"', "Content-Length": str(len(f.data)),
                        "Content-Type": "application/octet-stream"})
        self.send_response(200)
        self._headers(headers)
        if send_body:
            self.wfile.write(f.data)

    def _send_lfs(self, rest: str, send_body: bool) -> None:
        repo_id, _, sha = rest.rpartition("/")
        repo = self.fake_hub.repos.get(repo_id)
        match = [f for f in (repo.files.values() if repo else []) if f.sha256 == sha]
        if not match:
            self.send_response(404)
            self._headers({"Content-Length": "0"})
            return
        f = match[0]
        data = f.data
        if f.corrupt:  # same length, different bytes: only a content check can tell
            data = bytes(b ^ 0x5A for b in data)
        start = 0
        ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if ranged and int(ranged.group(1)) < len(data):  # a resumed download, as S3 serves
            start = int(ranged.group(1))
            self.fake_hub.resumed_downloads += 1
            self.send_response(206)
            self._headers({"Content-Length": str(len(data) - start),
                           "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}",
                           "Content-Type": "application/octet-stream"})
            data = data[start:]
        else:
            self.send_response(200)
            self._headers({"Content-Length": str(len(data)),
                           "Content-Type": "application/octet-stream"})
        if send_body and f.cut_downloads > 0:  # the connection drops mid-file
            f.cut_downloads -= 1
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if send_body:
            self.wfile.write(data)

    def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        self.send_response(status)
        headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Length": "0"}
        if commit:
            headers["X-Repo-Commit"] = commit
        self._headers(headers)

    def _headers(self, headers: dict[str, str]) -> None:
        # One request per connection: a stopped hub must not keep answering on a pooled
        # keep-alive connection (stop() then looks like the network going away).
        self.close_connection = True
        headers = {**headers, "Connection": "close"}
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
