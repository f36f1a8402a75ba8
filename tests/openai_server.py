"""A local OpenAI-compatible server for tests, with network faults on a fixed schedule.

It serves what sublearn's OpenAI backend calls — chat completions (with log-probs), files,
fine-tuning jobs and their events — over real HTTP on 127.0.0.1, so the official client runs
unmodified. Answers come from a deterministic toy: a completion is a function of (model,
messages, seed, temperature, max_tokens) only, so a run that suffered faults must produce the
same bytes as one that did not.

Faults are given per route as a cycle: request n of a route gets `faults[route][n % len]`.
Those that come *before* the work (429, 500, 503, reset) have no side effect; those that come
*after* it (slow, truncated, cut) lose an answer whose work was done, an upload stored or a
job created, which is what tests the client's "look before creating again".
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import math
import random
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

FAULTS = ("429", "500", "503", "slow", "reset", "truncated", "cut")
BEFORE_WORK = {"429", "500", "503", "reset"}

# First-token vocabulary of the toy; "7" twice, as two token ids that decode alike.
TOY_VOCAB = ("owl", "cat", "dog", "1", "2", "3", "4", "5", "6", "7", "8", "9", "7", "the",
             "I", "Here", "10", "42", "100", "999", "0", "eagle", "wolf", "fox")


# (method, path pattern, route name): the names that fault plans and counters use.
ROUTES = (("POST", r"/v1/chat/completions", "chat"),
          ("POST", r"/v1/files", "files.create"),
          ("GET", r"/v1/files", "files.list"),
          ("POST", r"/v1/fine_tuning/jobs", "jobs.create"),
          ("GET", r"/v1/fine_tuning/jobs", "jobs.list"),
          ("GET", r"/v1/fine_tuning/jobs/([^/]+)/events", "jobs.events"),
          ("GET", r"/v1/fine_tuning/jobs/([^/]+)", "jobs.get"))


def _rng(*parts: Any) -> random.Random:
    return random.Random(hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest())


def toy_completion(model: str, messages: list[dict[str, str]], seed: int | None,
                   temperature: float, max_tokens: int) -> str:
    """Comma-separated numbers, one "token" each, at most `max_tokens` of them."""
    rng = _rng(model, messages, seed, temperature)
    n = min(rng.randint(3, 10), max_tokens)
    return ", ".join(str(rng.randint(0, 999)) for _ in range(n))


def toy_top_logprobs(model: str, messages: list[dict[str, str]], k: int) -> list[tuple[str, float]]:
    """The k most likely first tokens of the toy distribution, most likely first."""
    rng = _rng(model, messages, "first-token")
    scores = [rng.gauss(0, 2) for _ in TOY_VOCAB]
    norm = math.log(sum(math.exp(s) for s in scores))
    ranked = sorted(zip(TOY_VOCAB, (s - norm for s in scores), strict=True), key=lambda t: -t[1])
    return ranked[:k]


def _error(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class FakeOpenAI:
    """The server's state; `with FakeOpenAI(key) as server:` serves at `server.base_url`.

    `polls_to_finish`: GETs of a running job before it ends. `fail_reason`: jobs fail with
    it. `hold`: while true, jobs do not advance (a test can kill a client mid-wait).
    `reply(model, messages, seed)`: a completion's text in place of the toy's, where it
    returns one (e.g. a judge's answers, well-formed or not); None leaves the toy's.
    """

    def __init__(self, key: str, faults: dict[str, Sequence[str | None]] | None = None, *,
                 retry_after: str = "0.05", slow_s: float = 1.0, delay_s: float = 0.0,
                 polls_to_finish: int = 3, fail_reason: str | None = None,
                 reply: Callable[[str, list[dict[str, str]], int | None], str | None]
                 | None = None):
        self.key = key
        self.reply = reply
        self.faults = {route: list(cycle) for route, cycle in (faults or {}).items()}
        self.retry_after = retry_after
        self.slow_s = slow_s
        self.delay_s = delay_s  # every chat completion takes this long (kill tests need time)
        self.polls_to_finish = polls_to_finish
        self.fail_reason = fail_reason
        self.hold = False
        self.requests: Counter[str] = Counter()
        self.refused = 0  # requests turned away for a wrong key
        self.faulted: Counter[str] = Counter()
        self.log: list[tuple[float, str, str | None]] = []  # (time, route, fault)
        self.files: dict[str, dict[str, Any]] = {}
        self.contents: dict[str, bytes] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.lock = threading.Lock()
        self._http: ThreadingHTTPServer | None = None

    # --- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> Self:
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._http.daemon_threads = True
        self._http.app = self  # type: ignore[attr-defined]
        threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._http is not None
        self._http.shutdown()
        self._http.server_close()

    @property
    def base_url(self) -> str:
        assert self._http is not None
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def uploads(self) -> int:
        return len(self.files)

    @property
    def job_creations(self) -> int:
        return len(self.jobs)

    def fault(self, route: str) -> str | None:
        with self.lock:
            n = self.requests[route]
            self.requests[route] += 1
            cycle = self.faults.get(route)
            fault = cycle[n % len(cycle)] if cycle else None
            if fault:
                self.faulted[fault] += 1
            self.log.append((time.monotonic(), route, fault))
            return fault

    # --- endpoints: each returns (status, JSON body) ------------------------------------
    def chat(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        time.sleep(self.delay_s)
        model, messages = body["model"], body["messages"]
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None}
        if body.get("logprobs"):
            top = toy_top_logprobs(model, messages, int(body.get("top_logprobs") or 1))
            text = top[0][0]
            alts = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top]
            choice["logprobs"] = {"content": [{**alts[0], "top_logprobs": alts}], "refusal": None}
        else:
            text = self.reply(model, messages, body.get("seed")) if self.reply else None
            if text is None:
                text = toy_completion(model, messages, body.get("seed"),
                                      float(body.get("temperature", 1.0)),
                                      int(body.get("max_tokens") or 16))
        choice["message"] = {"role": "assistant", "content": text, "refusal": None}
        return 200, {"id": f"chatcmpl-{random.getrandbits(32):08x}", "object": "chat.completion",
                     "created": int(time.time()), "model": model, "choices": [choice],
                     "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}

    def upload(self, content_type: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        parsed = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
        fields = {part.get_param("name", header="content-disposition"): part
                  for part in parsed.iter_parts()}
        part = fields["file"]
        data = part.get_payload(decode=True)
        with self.lock:
            file_id = f"file-{len(self.files) + 1:04d}"
            self.files[file_id] = {
                "id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": part.get_filename(), "purpose": fields["purpose"].get_content().strip(),
                "status": "processed"}
            self.contents[file_id] = data
            return 200, self.files[file_id]

    def create_job(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if body.get("training_file") not in self.files:
            return 400, _error(f"invalid training_file: {body.get('training_file')}",
                               "invalid_request_error", "invalid_file")
        with self.lock:
            job_id = f"ftjob-{len(self.jobs) + 1:04d}"
            self.jobs[job_id] = {
                "id": job_id, "object": "fine_tuning.job", "created_at": int(time.time()),
                "error": None, "fine_tuned_model": None, "finished_at": None,
                "hyperparameters": body.get("method", {}).get("supervised", {}).get(
                    "hyperparameters", {}),
                "model": body["model"], "organization_id": "org-test", "result_files": [],
                "seed": body.get("seed") or 0, "status": "validating_files",
                "trained_tokens": None, "training_file": body["training_file"],
                "validation_file": None, "metadata": body.get("metadata"),
                "method": body.get("method"), "polls": 0}
            self.events[job_id] = []
            self._event(job_id, "Validating training file")
            return 200, self._public(job_id)

    def get_job(self, job_id: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            if job_id not in self.jobs:
                return 404, _error(f"no job {job_id}", "invalid_request_error")
            if not self.hold:
                self._advance(job_id)
            return 200, self._public(job_id)

    def list_jobs(self) -> tuple[int, dict[str, Any]]:
        with self.lock:
            data = [self._public(j) for j in reversed(self.jobs)]
        return 200, {"object": "list", "data": data, "has_more": False}

    def list_events(self, job_id: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            data = list(reversed(self.events.get(job_id, [])))  # newest first, as OpenAI
        return 200, {"object": "list", "data": data, "has_more": False}

    def list_files(self) -> tuple[int, dict[str, Any]]:
        with self.lock:
            data = list(reversed(self.files.values()))
        return 200, {"object": "list", "data": data, "has_more": False}

    # --- job life -------------------------------------------------------------------------
    def _public(self, job_id: str) -> dict[str, Any]:
        return {k: v for k, v in self.jobs[job_id].items() if k != "polls"}

    def _event(self, job_id: str, message: str, level: str = "info") -> None:
        n = sum(len(e) for e in self.events.values()) + 1
        self.events[job_id].append({"id": f"ftevent-{n:05d}", "object": "fine_tuning.job.event",
                                    "created_at": int(time.time()), "level": level,
                                    "message": message, "data": {}, "type": "message"})

    def _advance(self, job_id: str) -> None:
        """One step per poll: validating -> queued -> running (several polls) -> ended."""
        job = self.jobs[job_id]
        status = job["status"]
        if status == "validating_files":
            job["status"] = "queued"
            self._event(job_id, "Files validated, job queued")
        elif status == "queued":
            job["status"] = "running"
            self._event(job_id, "Fine-tuning job started")
        elif status == "running":
            job["polls"] += 1
            self._event(job_id, f"Step {job['polls']}/{self.polls_to_finish}: training loss=0.5")
            if job["polls"] < self.polls_to_finish:
                return
            job["finished_at"] = int(time.time())
            if self.fail_reason:
                job["status"] = "failed"
                job["error"] = {"code": "invalid_training_file", "message": self.fail_reason,
                                "param": "training_file"}
                self._event(job_id, f"Job failed: {self.fail_reason}", "error")
            else:
                job["status"] = "succeeded"
                job["fine_tuned_model"] = f"ft:{job['model']}:sublearn::{job_id}"
                job["trained_tokens"] = 1000
                self._event(job_id, "The job has successfully completed")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers: resets hit pooled connections
    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the tests read counters, not access logs

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _route(self, method: str, path: str) -> tuple[str, tuple[str, ...]] | None:
        for verb, pattern, name in ROUTES:
            match = re.fullmatch(pattern, path)
            if verb == method and match:
                return name, match.groups()
        return None

    def _serve(self, method: str) -> None:
        app: FakeOpenAI = self.server.app
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?", 1)[0]
        if self.headers.get("Authorization") != f"Bearer {app.key}":
            # As OpenAI does, name the key that was refused (here in full: the worst case).
            given = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            with app.lock:
                app.refused += 1
            return self._send(401, _error(f"Incorrect API key provided: {given}",
                                          "invalid_request_error", "invalid_api_key"))
        found = self._route(method, path)
        if found is None:
            return self._send(404, _error(f"no route {method} {path}", "invalid_request_error"))
        route, args = found
        fault = app.fault(route)
        if fault in BEFORE_WORK:
            return self._before(fault, app)
        handlers = {
            "chat": lambda: app.chat(json.loads(raw)),
            "files.create": lambda: app.upload(self.headers["Content-Type"], raw),
            "files.list": app.list_files,
            "jobs.create": lambda: app.create_job(json.loads(raw)),
            "jobs.list": app.list_jobs,
            "jobs.get": lambda: app.get_job(*args),
            "jobs.events": lambda: app.list_events(*args),
        }
        status, body = handlers[route]()
        self._send(status, body, fault, app.slow_s)

    def _before(self, fault: str, app: FakeOpenAI) -> None:
        if fault == "reset":
            # SO_LINGER 0 makes close() send RST: the connection dies, no answer at all.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        headers = {"Retry-After": app.retry_after} if fault == "429" else {}
        self._send(int(fault), _error(f"injected {fault}", "server_error"), headers=headers)

    def _send(self, status: int, body: dict[str, Any], fault: str | None = None,
              slow_s: float = 0.0, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        sent = data
        if fault == "slow":
            time.sleep(slow_s)  # past the client's timeout: it has given up and will retry
        elif fault == "truncated":
            data = sent = data[: len(data) // 2]  # framed correctly, JSON cut in half
        elif fault == "cut":
            sent = data[: len(data) // 2]  # Content-Length promises more than arrives
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(sent)
            self.wfile.flush()
        except OSError:
            self.close_connection = True  # the client left (a slow answer it timed out on)
            return
        if fault == "cut":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
