"""A fake Hugging Face Hub: just enough of the HTTP API for `huggingface_hub` (0.36.x and 2.x)
to `snapshot_download` / `hf_hub_download` a model repo from it. Standard library only.

    hub = FakeHub()
    commit = hub.add_repo("tinyorg/tiny-llama", {"config.json": b"{...}",
                                                  "model.safetensors": Path("/tmp/x.safetensors")})
    with hub:                       # serves on http://127.0.0.1:<free port>
        env["HF_ENDPOINT"] = hub.url
        ...
        assert hub.count() == 0     # requests seen since hub.reset_log()

Endpoints (what the two client versions use, read from their sources):
  GET  /api/models/{repo_id}                       repo info of "main" (0.36 and 2.x `repo_info`)
  GET  /api/models/{repo_id}/revision/{rev}        repo info: id, sha, siblings [{rfilename}], ...
  GET  /api/models/{repo_id}/tree/{rev}[/{path}]   ?recursive=true; entries {type, path, oid,
                                                   size, lfs {oid, size, pointerSize}} (2.x
                                                   snapshot_download always lists the tree;
                                                   0.36 only for huge repos)
  HEAD /{repo_id}/resolve/{rev}/{path}             metadata: X-Repo-Commit, ETag (quoted), and for
                                                   LFS files X-Linked-Etag + X-Linked-Size
  GET  /{repo_id}/resolve/{rev}/{path}             content; Range: bytes=a-b / a- / -n -> 206
                                                   + Content-Range
Errors are what the real Hub sends: 404 with X-Error-Code RepoNotFound / RevisionNotFound /
EntryNotFound (the EntryNotFound one carries X-Repo-Commit, so clients write `.no_exist/`), and
416 for unsatisfiable ranges.

Blob identities follow git and git-lfs: a small file's etag is its git blob SHA-1
(sha1(b"blob <len>\\0" + data)); an LFS file's etag is the SHA-256 of its content and its tree
`oid` is the git blob SHA-1 of its LFS pointer file. File contents are bytes held in memory or a
Path read on demand (so a 512 MiB file is never held in memory).

Run it by hand: `python fakehub.py DIR [REPO_ID]` serves every file under DIR as one repo.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack",
                ".onnx", ".npz", ".npy", ".model", ".tflite", ".ot", ".zip", ".tar.gz")
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub moves anything this large to LFS anyway
CHUNK = 1 << 20

GITATTRIBUTES = b"".join(
    f"*{s} filter=lfs diff=lfs merge=lfs -text\n".encode() for s in LFS_SUFFIXES)


def git_blob_sha1(data: bytes) -> str:
    h = hashlib.sha1()
    h.update(b"blob %d\0" % len(data))
    h.update(data)
    return h.hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
            ).encode()


@dataclass
class RepoFile:
    path: str
    source: bytes | Path
    lfs: bool
    size: int = 0
    sha256: str = ""
    git_oid: str = ""  # git blob sha1 of the content (small file) or of the LFS pointer
    pointer_size: int = 0

    def __post_init__(self):
        if isinstance(self.source, (bytes, bytearray)):
            data = bytes(self.source)
            self.source = data
            self.size = len(data)
            self.sha256 = hashlib.sha256(data).hexdigest()
            blob_sha1 = git_blob_sha1(data)
        else:
            self.source = Path(self.source)
            self.size = self.source.stat().st_size
            h = hashlib.sha256()
            g = hashlib.sha1()
            g.update(b"blob %d\0" % self.size)
            with open(self.source, "rb") as f:
                while b := f.read(CHUNK):
                    h.update(b)
                    g.update(b)
            self.sha256 = h.hexdigest()
            blob_sha1 = g.hexdigest()
        if self.lfs:
            pointer = lfs_pointer(self.sha256, self.size)
            self.git_oid = git_blob_sha1(pointer)
            self.pointer_size = len(pointer)
        else:
            self.git_oid = blob_sha1

    @property
    def etag(self) -> str:
        """What the client names the blob: sha256 for LFS files, git blob sha1 otherwise."""
        return self.sha256 if self.lfs else self.git_oid

    def read(self, start: int, end: int):
        """Yield the bytes [start, end) in pieces."""
        if isinstance(self.source, bytes):
            for o in range(start, end, CHUNK):
                yield self.source[o:min(end, o + CHUNK)]
            return
        with open(self.source, "rb") as f:
            f.seek(start)
            left = end - start
            while left > 0:
                b = f.read(min(CHUNK, left))
                if not b:
                    raise IOError(f"{self.source} shrank while being served")
                left -= len(b)
                yield b


@dataclass
class Repo:
    repo_id: str
    files: dict[str, RepoFile]
    sha: str
    last_modified: str
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit

    def resolve(self, rev: str) -> str | None:
        if rev == self.sha or rev in self.branches:
            return self.sha
        return None

    def info(self) -> dict:
        return {
            "_id": hashlib.sha1(self.repo_id.encode()).hexdigest()[:24],
            "id": self.repo_id,
            "modelId": self.repo_id,
            "author": self.repo_id.split("/")[0] if "/" in self.repo_id else None,
            "sha": self.sha,
            "lastModified": self.last_modified,
            "createdAt": self.last_modified,
            "private": False,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "library_name": None,
            "siblings": [{"rfilename": p} for p in sorted(self.files)],
            "spaces": [],
            "usedStorage": sum(f.size for f in self.files.values()),
        }

    def tree(self, prefix: str, recursive: bool) -> list[dict] | None:
        """Tree entries under `prefix` ("" = root), as the Hub lists them; None if no such dir."""
        prefix = prefix.strip("/")
        pre = prefix + "/" if prefix else ""
        if prefix and not any(p.startswith(pre) for p in self.files):
            return None
        entries: dict[str, dict] = {}
        for path in sorted(self.files):
            if not path.startswith(pre):
                continue
            rest = path[len(pre):].split("/")
            # directories between prefix and the file
            for i in range(1, len(rest)):
                d = pre + "/".join(rest[:i])
                if i > 1 and not recursive:
                    break
                entries.setdefault(d, {"type": "directory", "oid": git_blob_sha1(d.encode()),
                                       "size": 0, "path": d})
            if len(rest) > 1 and not recursive:
                continue
            f = self.files[path]
            e = {"type": "file", "oid": f.git_oid, "size": f.size, "path": path}
            if f.lfs:
                e["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
            entries[path] = e
        return [entries[k] for k in sorted(entries)]


class FakeHub:
    """The server. Thread-safe; start()/stop() or use as a context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, verbose: bool = False):
        self.host = host
        self.port = port
        self.verbose = verbose
        self.repos: dict[str, Repo] = {}
        self._lock = threading.Lock()
        self._log: list[tuple[str, str, int]] = []  # (method, path+query, status)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- content ---------------------------------------------------------------------------------

    def add_repo(self, repo_id: str, files: dict[str, bytes | str | Path],
                 lfs: set[str] | None = None, gitattributes: bool = True,
                 last_modified: str = "2025-01-01T00:00:00.000Z") -> str:
        """Add (or replace) a repo; returns its commit sha. `files` maps repo paths to content
        (bytes, str, or a Path to read). LFS files: those named in `lfs`, else by suffix/size."""
        if "/" in repo_id and (repo_id.count("/") != 1 or not all(repo_id.split("/"))):
            raise ValueError(f"bad repo id {repo_id!r}")
        all_files: dict[str, bytes | Path] = {}
        if gitattributes:
            all_files[".gitattributes"] = GITATTRIBUTES
        for p, c in files.items():
            all_files[p] = c.encode() if isinstance(c, str) else c
        rf: dict[str, RepoFile] = {}
        for p, c in all_files.items():
            size = len(c) if isinstance(c, (bytes, bytearray)) else Path(c).stat().st_size
            is_lfs = (p in lfs) if lfs is not None else (
                p.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE)
            rf[p] = RepoFile(p, c, is_lfs)
        # A deterministic "commit": hash of the repo id and the tree.
        h = hashlib.sha1(repo_id.encode())
        for p in sorted(rf):
            h.update(b"\0" + p.encode() + b"\0" + rf[p].git_oid.encode())
        sha = h.hexdigest()
        with self._lock:
            self.repos[repo_id] = Repo(repo_id, rf, sha, last_modified, {"main": sha})
        return sha

    def repo(self, repo_id: str) -> Repo:
        return self.repos[repo_id]

    # -- request log -----------------------------------------------------------------------------

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._log.append((method, path, status))

    def requests(self) -> list[tuple[str, str, int]]:
        with self._lock:
            return list(self._log)

    def count(self) -> int:
        with self._lock:
            return len(self._log)

    def reset_log(self) -> None:
        with self._lock:
            self._log.clear()

    # -- server ----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._httpd is not None, "hub not started"
        return f"http://{self.host}:{self._httpd.server_address[1]}"

    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._httpd = ThreadingHTTPServer((self.host, self.port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fakehub",
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients' connection pools expect
    server_version = "fakehub/1"

    def log_message(self, fmt, *args):  # noqa: A003
        if self.hub.verbose:
            sys.stderr.write("fakehub: " + (fmt % args) + "\n")

    # -- plumbing --------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              content_type: str = "application/json; charset=utf-8") -> None:
        self._status = status
        self.send_response(status)
        hdrs = {"Content-Type": content_type, "Content-Length": str(len(body))}
        hdrs.update(headers or {})
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, status: int, code: str | None, message: str,
               headers: dict | None = None) -> None:
        h = dict(headers or {})
        if code:
            h["X-Error-Code"] = code
        h["X-Error-Message"] = message
        self._json({"error": message}, status, h)

    def _dispatch(self) -> None:
        self._status = 0
        try:
            self._route()
        finally:
            self.hub._record(self.command, self.path, self._status)

    def do_GET(self):  # noqa: N802
        self._dispatch()

    def do_HEAD(self):  # noqa: N802
        self._dispatch()

    def do_POST(self):  # noqa: N802
        # Nothing the download path needs (telemetry is disabled); answer like an unknown route.
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        self._dispatch()

    # -- routing ---------------------------------------------------------------------------------

    def _find_repo(self, parts: list[str]) -> tuple[Repo | None, str, list[str]]:
        """Split path parts into (repo, repo_id, rest): repo ids are 'org/name' or 'name'."""
        with self.hub._lock:
            repos = dict(self.hub.repos)
        if len(parts) >= 2 and f"{parts[0]}/{parts[1]}" in repos:
            rid = f"{parts[0]}/{parts[1]}"
            return repos[rid], rid, parts[2:]
        if parts and parts[0] in repos:
            return repos[parts[0]], parts[0], parts[1:]
        # unknown: assume org/name
        n = 2 if len(parts) >= 2 else len(parts)
        return None, "/".join(parts[:n]), parts[n:]

    def _route(self) -> None:
        u = urlsplit(self.path)
        query = parse_qs(u.query)
        # Split on "/" before unquoting: a revision like "refs%2Fpr%2F1" stays one component.
        raw = [p for p in u.path.split("/") if p != ""]
        parts = [unquote(p) for p in raw]

        if len(parts) >= 2 and parts[0] == "api" and parts[1] == "models":
            if self.command not in ("GET", "HEAD"):
                return self._error(405, None, "method not allowed")
            repo, rid, rest = self._find_repo(parts[2:])
            if repo is None:
                return self._error(404, "RepoNotFound", f"Repository not found: {rid}")
            if not rest:
                return self._repo_info(repo, "main")
            if rest[0] == "revision" and len(rest) == 2:
                return self._repo_info(repo, rest[1])
            if rest[0] == "tree" and len(rest) >= 2:
                rec = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                return self._tree(repo, rest[1], "/".join(rest[2:]), rec)
            return self._error(404, None, f"unknown API route {u.path}")

        repo, rid, rest = self._find_repo(parts)
        if len(rest) >= 3 and rest[0] == "resolve":
            if self.command not in ("GET", "HEAD"):
                return self._error(405, None, "method not allowed")
            if repo is None:
                return self._error(404, "RepoNotFound", f"Repository not found: {rid}")
            return self._resolve(repo, rest[1], "/".join(rest[2:]))
        return self._error(404, None, f"not found: {u.path}")

    # -- handlers --------------------------------------------------------------------------------

    def _repo_info(self, repo: Repo, rev: str) -> None:
        sha = repo.resolve(rev)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        self._json(repo.info())

    def _tree(self, repo: Repo, rev: str, path: str, recursive: bool) -> None:
        sha = repo.resolve(rev)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        entries = repo.tree(path, recursive)
        if entries is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist on \"{rev}\"",
                               {"X-Repo-Commit": sha})
        self._json(entries)

    def _resolve(self, repo: Repo, rev: str, path: str) -> None:
        sha = repo.resolve(rev)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        f = repo.files.get(path)
        if f is None:
            return self._error(404, "EntryNotFound", f"Entry not found: {path}",
                               {"X-Repo-Commit": sha})
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{f.etag}"',
            "Accept-Ranges": "bytes",
            "Last-Modified": formatdate(usegmt=True),
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}; "
                                   f"filename=\"{path.rsplit('/', 1)[-1]}\";",
        }
        if f.lfs:
            headers["X-Linked-Etag"] = f'"{f.sha256}"'
            headers["X-Linked-Size"] = str(f.size)
        start, end, status = 0, f.size, 200
        rng = self.headers.get("Range")
        if rng:
            m = _RANGE_RE.match(rng.strip())
            if m and (m.group(1) or m.group(2)):
                a, b = m.group(1), m.group(2)
                if a == "":  # suffix range: last N bytes
                    n = int(b)
                    start, end = max(0, f.size - n), f.size
                else:
                    start = int(a)
                    end = min(f.size, int(b) + 1) if b else f.size
                if start >= f.size or start >= end:
                    headers["Content-Range"] = f"bytes */{f.size}"
                    return self._send(416, b"", headers, "text/plain")
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
        self._status = status
        self.send_response(status)
        headers["Content-Type"] = "application/octet-stream"
        headers["Content-Length"] = str(end - start)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "GET":
            try:
                for piece in f.read(start, end):
                    self.wfile.write(piece)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True


def _serve_dir(root: Path, repo_id: str) -> None:
    files = {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}
    hub = FakeHub(verbose=True)
    sha = hub.add_repo(repo_id, files)
    with hub:
        print(f"serving {len(files)} files of {root} as {repo_id}@{sha} at {hub.url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: fakehub.py DIR [REPO_ID]")
    d = Path(sys.argv[1])
    _serve_dir(d, sys.argv[2] if len(sys.argv) > 2 else f"local/{d.resolve().name}")
    os._exit(0)
