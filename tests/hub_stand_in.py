"""A local stand-in for the Hugging Face Hub HTTP API, for publishing tests without network.

It serves, on 127.0.0.1 only, the routes that huggingface_hub's `whoami`, `create_repo` and
`create_commit` call (checked against huggingface_hub 2.4's `hf_api.py`, `_commit_api.py`, `lfs.py`):

  GET  /api/whoami-v2                                  token check
  POST /api/repos/create                               create a repo (409 if it exists)
  POST /api/validate-yaml                              README.md metadata check before a commit
  POST /api/models/{repo}/preupload/{revision}         upload mode per file ("lfs" for weights)
  POST /{repo}.git/info/lfs/objects/batch              LFS batch API (basic transfer)
  PUT  /stand-in-lfs/{oid}                             LFS object upload (sha256 checked)
  POST /stand-in-lfs-verify/{oid}                      LFS verify
  POST /api/models/{repo}/commit/{revision}            ndjson commit: applied atomically
  GET  /api/models/{repo}[/revision/{revision}]         repo info (asked when a commit would change nothing)

huggingface_hub also asks `{HF_ENDPOINT}/api/agent-harnesses` once per process (for its user agent);
the stand-in answers 404, which the client treats as "no registry".

Committed files are written under `storage_dir/{owner}/{name}/`, so a test can load the uploaded
folder exactly as a user's download would hold it. Every request is recorded in `requests`; commits
in `commits`. Only the transport is replaced: the client code runs unchanged. Xet uploads are not
implemented, so the client must run with `HF_HUB_DISABLE_XET=1` (the LFS protocol is then used,
as by any huggingface_hub without `hf_xet`).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

# Paths the Hub stores with LFS in a new model repo (a subset of its default .gitattributes).
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.onnx", "*.msgpack", "*.pkl")
MAX_BODY_BYTES = 256 * 1024 * 1024


@dataclass
class RecordedRequest:
    method: str
    path: str
    authorization: str | None
    body_size: int


@dataclass
class RecordedCommit:
    repo_id: str
    revision: str
    summary: str
    oid: str
    regular_files: list[str] = field(default_factory=list)
    lfs_files: list[str] = field(default_factory=list)
    deleted_files: list[str] = field(default_factory=list)


def git_blob_sha1(content: bytes) -> str:
    """The git object id of a regular file, as the Hub reports it."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class HubStandIn:
    """Threaded HTTP server imitating the Hub's upload API. Use as a context manager."""

    def __init__(
        self,
        storage_dir: Path,
        *,
        valid_token: str = "hf_stand_in_write_token",
        user_name: str = "stand-in-user",
        fail_commit_status: int | None = None,
        drop_commit_response: bool = False,
    ) -> None:
        self.storage_dir = Path(storage_dir)
        self.valid_token = valid_token
        self.user_name = user_name
        self.fail_commit_status = fail_commit_status  # answer commits with this HTTP error, applying nothing
        self.drop_commit_response = drop_commit_response  # apply commits, then close without answering
        self.repos: dict[str, dict[str, Any]] = {}  # repo_id -> {"private": bool, "files": {path: bytes}}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 hex -> content
        self.requests: list[RecordedRequest] = []
        self.commits: list[RecordedCommit] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._make_handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def repo_folder(self, repo_id: str) -> Path:
        return self.storage_dir / repo_id

    def __enter__(self) -> "HubStandIn":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # ----------------------------------------------------------------------------------- routes

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        """Dispatch one request; returns (status, headers, body)."""
        if method == "PUT" and path.startswith("/stand-in-lfs/"):
            return self._lfs_store(path.rsplit("/", 1)[-1], body)
        if method == "GET" and path == "/api/agent-harnesses":
            return _json_response(404, {"error": "the stand-in has no agent registry"})
        if not self._authorized(headers):
            return _json_response(401, {"error": "Invalid credentials in Authorization header"})
        if method == "GET" and path == "/api/whoami-v2":
            return _json_response(
                200,
                {
                    "type": "user",
                    "name": self.user_name,
                    "fullname": "Stand-in User",
                    "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "stand-in", "role": "write"}},
                },
            )
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo(json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(body))
        if method == "POST" and path.startswith("/stand-in-lfs-verify/"):
            oid = path.rsplit("/", 1)[-1]
            if oid not in self.lfs_objects:
                return _json_response(404, {"error": f"LFS object {oid} was not uploaded"})
            return _json_response(200, {"message": "verified"})
        if method == "POST" and path.endswith(".git/info/lfs/objects/batch"):
            repo_id = path[1 : -len(".git/info/lfs/objects/batch")]
            return self._lfs_batch(repo_id, json.loads(body))
        if method == "GET" and path.startswith("/api/models/"):
            return self._repo_info(path[len("/api/models/") :])
        if method == "POST" and path.startswith("/api/models/"):
            repo_and_action = path[len("/api/models/") :]
            for action in ("preupload", "commit"):
                marker = f"/{action}/"
                if marker in repo_and_action:
                    repo_id, revision = repo_and_action.split(marker, 1)
                    if repo_id not in self.repos:
                        return _json_response(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                    if action == "preupload":
                        return self._preupload(repo_id, json.loads(body))
                    return self._commit(repo_id, unquote(revision), body)
        return _json_response(404, {"error": f"stand-in has no route {method} {path}"})

    def _authorized(self, headers: dict[str, str]) -> bool:
        return headers.get("authorization") == f"Bearer {self.valid_token}"

    def _create_repo(self, payload: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        namespace = payload.get("organization") or self.user_name
        repo_id = f"{namespace}/{payload['name']}"
        if payload.get("type", "model") != "model":
            return _json_response(400, {"error": "the stand-in only hosts model repos"})
        with self._lock:
            if repo_id in self.repos:
                return _json_response(409, {"error": "You already created this model repo", "url": self._url(repo_id)})
            self.repos[repo_id] = {"private": payload.get("visibility") == "private", "files": {}}
        return _json_response(200, {"url": self._url(repo_id), "name": repo_id, "id": repo_id})

    def _repo_info(self, repo_and_revision: str) -> tuple[int, dict[str, str], bytes]:
        repo_id = "/".join(repo_and_revision.split("/")[:2])
        if repo_id not in self.repos:
            return _json_response(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        head = next((commit.oid for commit in reversed(self.commits) if commit.repo_id == repo_id), None)
        siblings = [{"rfilename": path} for path in sorted(self.repos[repo_id]["files"])]
        return _json_response(
            200, {"id": repo_id, "sha": head, "private": self.repos[repo_id]["private"], "siblings": siblings}
        )

    def _validate_yaml(self, payload: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        from huggingface_hub import ModelCard

        try:
            card = ModelCard(payload["content"], ignore_metadata_errors=False)
        except Exception as error:  # the Hub answers 400 with the reason
            return _json_response(400, {"errors": [{"message": str(error)}], "warnings": []})
        warnings = [] if card.data.to_dict() else [{"message": "empty or missing yaml metadata in repo card"}]
        return _json_response(200, {"errors": [], "warnings": warnings})

    def _preupload(self, repo_id: str, payload: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        existing = self.repos[repo_id]["files"]
        files = []
        for entry in payload["files"]:
            path = entry["path"]
            is_lfs = any(fnmatch.fnmatch(path.rsplit("/", 1)[-1], pattern) for pattern in LFS_PATTERNS)
            oid = None
            if path in existing:
                content = existing[path]
                oid = hashlib.sha256(content).hexdigest() if is_lfs else git_blob_sha1(content)
            files.append({"path": path, "uploadMode": "lfs" if is_lfs else "regular", "shouldIgnore": False, "oid": oid})
        return _json_response(200, {"files": files, "commitOid": "0" * 40})

    def _lfs_batch(self, repo_id: str, payload: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        if repo_id not in self.repos:
            return _json_response(404, {"message": "Repository not found"})
        objects = []
        for entry in payload["objects"]:
            oid, size = entry["oid"], entry["size"]
            answer: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.lfs_objects:
                answer["actions"] = {
                    "upload": {"href": f"{self.endpoint}/stand-in-lfs/{oid}"},
                    "verify": {"href": f"{self.endpoint}/stand-in-lfs-verify/{oid}"},
                }
            objects.append(answer)
        return _json_response(200, {"transfer": "basic", "objects": objects})

    def _lfs_store(self, oid: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if hashlib.sha256(body).hexdigest() != oid:
            return _json_response(400, {"error": "content does not match its sha256 oid"})
        with self._lock:
            self.lfs_objects[oid] = body
        return 200, {"ETag": f'"{oid}"'}, b""

    def _commit(self, repo_id: str, revision: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            return _json_response(400, {"error": "commit payload must start with a header line"})
        if self.fail_commit_status is not None:
            return _json_response(self.fail_commit_status, {"error": "stand-in configured to fail commits"})
        staged: dict[str, bytes | None] = {}
        commit = RecordedCommit(repo_id=repo_id, revision=revision, summary=lines[0]["value"]["summary"], oid="")
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                if value.get("encoding") != "base64":
                    return _json_response(400, {"error": "regular files must be base64"})
                staged[value["path"]] = base64.b64decode(value["content"])
                commit.regular_files.append(value["path"])
            elif key == "lfsFile":
                content = self.lfs_objects.get(value["oid"])
                if content is None or len(content) != value.get("size", len(content)):
                    return _json_response(422, {"error": f"LFS object of {value['path']} was never uploaded"})
                staged[value["path"]] = content
                commit.lfs_files.append(value["path"])
            elif key == "deletedFile":
                staged[value["path"]] = None
                commit.deleted_files.append(value["path"])
            else:
                return _json_response(400, {"error": f"stand-in does not support commit operation {key!r}"})
        with self._lock:  # apply all operations at once, like a git commit
            files = self.repos[repo_id]["files"]
            for path, content in staged.items():
                target = self.repo_folder(repo_id) / path
                if content is None:
                    files.pop(path, None)
                    target.unlink(missing_ok=True)
                    continue
                files[path] = content
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            commit.oid = hashlib.sha1(f"{len(self.commits)}:{repo_id}:{sorted(staged)}".encode()).hexdigest()
            self.commits.append(commit)
        return _json_response(
            200, {"commitUrl": f"{self._url(repo_id)}/commit/{commit.oid}", "commitOid": commit.oid, "success": True}
        )

    def _url(self, repo_id: str) -> str:
        return f"{self.endpoint}/{repo_id}"

    # --------------------------------------------------------------------------------- transport

    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    total = 0
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            self.rfile.readline()  # trailing CRLF
                            break
                        total += size
                        if total > MAX_BODY_BYTES:
                            raise ValueError("request body too large for the stand-in")
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(chunks)
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    raise ValueError("request body too large for the stand-in")
                return self.rfile.read(length)

            def _serve(self) -> None:
                body = self._read_body()
                path = urlsplit(self.path).path
                headers = {name.lower(): value for name, value in self.headers.items()}
                with stand_in._lock:
                    stand_in.requests.append(
                        RecordedRequest(self.command, path, headers.get("authorization"), len(body))
                    )
                status, response_headers, response_body = stand_in.handle(self.command, path, headers, body)
                if stand_in.drop_commit_response and self.command == "POST" and "/commit/" in path:
                    self.close_connection = True  # the commit is applied but its answer is lost
                    return
                self.send_response(status)
                for name, value in response_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(response_body)))
                self.end_headers()
                self.wfile.write(response_body)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

        return Handler


def _json_response(
    status: int, payload: dict[str, Any], extra_headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/json", **(extra_headers or {})}
    return status, headers, json.dumps(payload).encode()
