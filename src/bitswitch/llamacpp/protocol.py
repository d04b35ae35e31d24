"""The JSON-lines client of ``run.mjs``: one node process, one request line out, one answer line back.

Requests are ``{"id", "op", ...}``; answers ``{"id", "ok": true, "result"}`` or ``{"id", "ok": false,
"error"}``. Every failure (an error answer, a line that is not JSON, an answer out of step, the
process gone) is a one-line :class:`BitswitchError`.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from ..errors import BitswitchError
from .install import LlamaCppInstall

SCRIPT = Path(__file__).with_name("run.mjs")


class NodeProcess:
    """``node run.mjs`` for ``install``; :meth:`call` one op at a time, :meth:`close` when done."""

    def __init__(self, install: LlamaCppInstall):
        self._next_id = 0
        # stderr goes to a file, not a pipe nobody reads: llama.cpp's logs must never block the process
        self._stderr = tempfile.TemporaryFile(mode="w+b")
        self._proc = subprocess.Popen([install.node, str(SCRIPT), str(install.entry)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._stderr, text=True, encoding="utf-8",
                                      bufsize=1)

    def call(self, op: str, **args):
        """The ``result`` of ``op`` (blocks until the answer; no time limit: a generation takes its time)."""
        if self._proc is None:
            raise BitswitchError("this llama.cpp bridge is closed: open a new LlamaCpp")
        self._next_id += 1
        request = {"id": self._next_id, "op": op, **args}
        try:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        except OSError:   # BrokenPipeError included: the process is gone
            line = ""
        if not line:
            raise BitswitchError(f"the llama.cpp process ended during {op!r} (exit code {self._proc.wait()}): "
                                 f"{self._stderr_tail() or 'no message'}")
        try:
            reply = json.loads(line)
        except ValueError:
            raise BitswitchError(f"the llama.cpp process answered {op!r} with a line that is not JSON: "
                                 f"{line.strip()[:200]}") from None
        if reply.get("id") != request["id"]:
            raise BitswitchError(f"the llama.cpp process answered request {reply.get('id')} instead of "
                                 f"{request['id']} ({op!r}): {reply.get('error') or 'the protocol is out of step'}")
        if not reply.get("ok"):
            raise BitswitchError(f"llama.cpp {op} failed: {reply.get('error')}")
        return reply["result"]

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        lines = [ln for ln in self._stderr.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        return lines[-1].strip()[:300] if lines else ""

    def close(self) -> None:
        """Ask the process to end, kill it after 10 s (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.stdin.write(json.dumps({"id": 0, "op": "close"}) + "\n")
                proc.stdin.flush()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        finally:
            for f in (proc.stdin, proc.stdout):
                f.close()
            self._stderr.close()
