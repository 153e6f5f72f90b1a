"""A small local HTTP server that speaks the OpenAI chat-completions API, for the prompt-enhancer tests.

It answers `POST /v1/chat/completions` from a script of replies the test sets (`server.replies`), one per
request, and keeps every request body it received (`server.requests`). A reply is the assistant's text, an
`(HTTP status, error message)` pair, or `Stall(seconds)` (answer nothing until then, or until the server stops).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Stall:
    seconds: float


@dataclass
class ChatServer:
    url: str
    replies: list = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)


def _completion(model: str, content: str) -> dict:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"},
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


@contextmanager
def chat_server() -> Iterator[ChatServer]:
    """A ChatServer on a free loopback port (its URL ends in /v1, like the real ones); stopped on leaving."""
    state = ChatServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802  (the name http.server calls)
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            state.requests.append(body)
            reply = state.replies.pop(0) if state.replies else (500, "the test scripted no reply for this request")
            if isinstance(reply, Stall):
                state.stopping.wait(reply.seconds)
                return
            if self.path != "/v1/chat/completions":
                status, payload = 404, {"error": {"message": f"no route {self.path}", "type": "not_found"}}
            elif isinstance(reply, tuple):
                status, payload = reply[0], {"error": {"message": reply[1], "type": "test_error"}}
            else:
                status, payload = 200, _completion(body.get("model", ""), reply)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:  # quiet test output
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stopping.set()  # releases stalled handlers
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
