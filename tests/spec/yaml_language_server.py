"""A client of yaml-language-server (the server the README's modeline is written for), speaking
the Language Server Protocol over the server's stdin/stdout, for tests/spec/test_editor.py.

The server is installed with npm from ``tests/spec/editor/package-lock.json`` (a pinned
yaml-language-server and its dependencies) into a cache folder outside the repository, once per
lockfile: ``$ODESPEC_TEST_CACHE`` or the system's temporary folder. :func:`install` says why when
it cannot be had (no node or npm, no registry), and the tests skip with that reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

LOCK_DIR = Path(__file__).resolve().parent / "editor"
#: the oldest node the pinned server runs on
MIN_NODE = 18
INSTALL_TIMEOUT_S = 240


def _cache_root() -> Path:
    return Path(os.environ.get("ODESPEC_TEST_CACHE") or Path(tempfile.gettempdir()) / "odespec-test-cache")


def install() -> Union[Path, str]:
    """The server's entry script, installed (or found installed) in the cache; or, when it cannot
    be had, one line saying why."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        return "node and npm are needed to run yaml-language-server (not on PATH)"
    try:
        version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
        major = int(version.lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        return f"cannot run node: {e}"
    if major < MIN_NODE:
        return f"yaml-language-server needs node >= {MIN_NODE}, found {version}"
    lock = (LOCK_DIR / "package-lock.json").read_bytes()
    target = _cache_root() / f"yaml-language-server-{hashlib.sha256(lock).hexdigest()[:16]}"
    script = target / "node_modules" / "yaml-language-server" / "bin" / "yaml-language-server"
    if script.is_file():
        return script
    target.parent.mkdir(parents=True, exist_ok=True)
    # installed beside the target and renamed into place, so that a concurrent run or an
    # interrupted install never leaves a half-filled folder where the next run looks
    work = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(LOCK_DIR / name, work / name)
        proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error",
                               # an unreachable registry fails in seconds, not after minutes of retries
                               "--fetch-retries=1", "--fetch-retry-mintimeout=1000", "--fetch-retry-maxtimeout=5000"],
                              cwd=work, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        if proc.returncode != 0:
            return f"`npm ci` of yaml-language-server failed: {_npm_reason(proc.stderr or proc.stdout)}"
        try:
            work.rename(target)
        except OSError:  # another run put it there first
            pass
    except subprocess.TimeoutExpired:
        return f"`npm ci` of yaml-language-server took over {INSTALL_TIMEOUT_S} s"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return script if script.is_file() else f"yaml-language-server is not where npm ci put it ({script})"


def _npm_reason(output: str) -> str:
    """The line of npm's error output that says what went wrong (not its code, stack or log)."""
    lines = [x.removeprefix("npm error").strip() for x in output.strip().splitlines()]
    said = [x for x in lines if x and not re.match(r"(code|syscall|errno|at |A complete log)", x)]
    return (said or lines or ["no output"])[0]


class LanguageServer:
    """yaml-language-server over stdio: requests with their responses, the diagnostics it
    publishes, and the answers to its own requests (the ``yaml`` settings)."""

    SETTINGS = {"yaml": {"validate": True, "hover": True, "completion": True,
                         # no schema catalogue from the web: the modeline names the schema
                         "schemaStore": {"enable": False}}}

    def __init__(self, script: Path, root: Path, timeout: float = 30.0):
        self.timeout = timeout
        self._proc = subprocess.Popen([shutil.which("node") or "node", str(script), "--stdio"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._inbox: "queue.Queue[Optional[dict]]" = queue.Queue()
        self._next_id = 0
        self.diagnostics: dict[str, list[dict]] = {}
        threading.Thread(target=self._read, daemon=True).start()
        self.request("initialize", {
            "processId": os.getpid(), "rootUri": root.as_uri(), "workspaceFolders": None,
            "capabilities": {"textDocument": {
                "completion": {"completionItem": {"snippetSupport": True,
                                                  "documentationFormat": ["markdown", "plaintext"]}},
                "hover": {"contentFormat": ["markdown", "plaintext"]},
                "publishDiagnostics": {}},
                "workspace": {"configuration": True}},
        })
        self.notify("initialized", {})
        self.notify("workspace/didChangeConfiguration", {"settings": self.SETTINGS})

    # -- the protocol -------------------------------------------------------------------------
    def _read(self) -> None:
        out = self._proc.stdout
        assert out is not None
        while True:
            length = None
            while True:
                line = out.readline()
                if not line:
                    self._inbox.put(None)
                    return
                if not line.strip():
                    break
                name, _, value = line.decode("ascii").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if length is not None:
                self._inbox.put(json.loads(out.read(length)))

    def _send(self, message: dict) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode("utf-8")
        stdin = self._proc.stdin
        assert stdin is not None
        stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        stdin.flush()

    def notify(self, method: str, params: Any) -> None:
        self._send({"method": method, "params": params})

    def request(self, method: str, params: Any) -> Any:
        self._next_id += 1
        rid = self._next_id
        self._send({"id": rid, "method": method, "params": params})
        reply = self._wait(lambda m: m.get("id") == rid and "method" not in m, f"the reply to {method}")
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result")

    def _wait(self, wanted: Callable[[dict], bool], what: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            try:
                message = self._inbox.get(timeout=max(left, 0.01))
            except queue.Empty:
                raise TimeoutError(f"yaml-language-server sent no {what} in {self.timeout:g} s") from None
            if message is None:
                raise RuntimeError(f"yaml-language-server exited (code {self._proc.poll()}) before {what}")
            if "method" in message and "id" in message:  # the server asks: settings, registrations
                items = message.get("params", {}).get("items", []) if message["method"] == "workspace/configuration" else []
                result = [self.SETTINGS.get(i.get("section", ""), None) for i in items] if items else None
                self._send({"id": message["id"], "result": result})
                continue
            if message.get("method") == "textDocument/publishDiagnostics":
                self.diagnostics[message["params"]["uri"]] = message["params"]["diagnostics"]
            if wanted(message):
                return message

    # -- documents ----------------------------------------------------------------------------
    def open(self, path: Path, text: Optional[str] = None) -> tuple[str, list[dict]]:
        """Open ``path`` (its text, or ``text``); its URI and the diagnostics the server publishes."""
        uri = path.resolve().as_uri()
        self.diagnostics.pop(uri, None)
        content = path.read_text(encoding="utf-8") if text is None else text
        self.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "yaml", "version": 1,
                                                              "text": content}})
        self._wait(lambda m: m.get("method") == "textDocument/publishDiagnostics" and m["params"]["uri"] == uri,
                   f"diagnostics for {path.name}")
        return uri, self.diagnostics[uri]

    def close(self, uri: str) -> None:
        self.notify("textDocument/didClose", {"textDocument": {"uri": uri}})

    def complete(self, uri: str, line: int, character: int) -> list[dict]:
        result = self.request("textDocument/completion", {"textDocument": {"uri": uri},
                                                           "position": {"line": line, "character": character}})
        return result["items"] if isinstance(result, dict) else list(result or [])

    def hover(self, uri: str, line: int, character: int) -> str:
        result = self.request("textDocument/hover", {"textDocument": {"uri": uri},
                                                      "position": {"line": line, "character": character}})
        contents = (result or {}).get("contents", "")
        return contents.get("value", "") if isinstance(contents, dict) else str(contents)

    def shutdown(self) -> None:
        try:
            self.request("shutdown", None)
            self.notify("exit", None)
            self._proc.wait(timeout=10)
        except (OSError, RuntimeError, TimeoutError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()
