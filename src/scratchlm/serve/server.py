"""Listening: bind the port first, load the model, then run uvicorn on that socket until Ctrl-C.

The socket is bound before the model loads, so a port in use is one sentence at once rather
than a log line after a long load, and nothing else can take the port in between. `--port 0`
takes any free port; the URL printed once the server is ready names the real one.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from pathlib import Path

import uvicorn

from scratchlm.console import info, is_quiet
from scratchlm.errors import UserError

GRACEFUL_SHUTDOWN_S = 3
"""Ctrl-C lets answers in progress finish this long, then cuts them."""


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (not yet listening); a UserError when that is impossible."""
    if not 0 <= port <= 65535:
        raise UserError(f"The port (--port) is {port}; it must be between 0 (any free port) and 65535.")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as error:
        raise UserError(f"The host (--host) {host!r} cannot be resolved ({error.strerror}); use an address such as 127.0.0.1 or 0.0.0.0.") from None
    sock = socket.socket(family, kind, proto)
    # A restarted server need not wait for its old connections' TIME_WAIT; a live listener still blocks the port.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise UserError(f"Port {port} on {host} is in use; stop the program listening there or choose another port with --port.") from None
        raise UserError(f"Cannot listen on {host} port {port} ({error.strerror}); choose another --host or --port.") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def run(app: object, sock: socket.socket, ready_line: str) -> None:
    """Serve `app` on `sock` until Ctrl-C (or SIGTERM); print `ready_line` once requests are answered."""

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                print(ready_line, flush=True)

    config = uvicorn.Config(app, log_level="warning" if is_quiet() else "info", ws="none", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)  # type: ignore[arg-type]
    Server(config).run(sockets=[sock])


def serve(
    checkpoint: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str | None = None,
    max_batch_size: int = 8,
    queue_size: int = 16,
    api_key: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
) -> None:
    """Serve a checkpoint's model over OpenAI's API and the chat page until Ctrl-C."""
    from scratchlm.generate.layout import load_for_inference
    from scratchlm.serve.app import create_app
    from scratchlm.serve.worker import check_limits

    check_limits(max_batch_size, queue_size)
    sock = bind(host, port)
    try:
        model, tokenizer, meta = load_for_inference(checkpoint, device, dtype)
        template = meta.get("chat_template")
        name = model_name or Path(checkpoint).resolve().name
        app = create_app(
            model,
            tokenizer,
            model_name=name,
            chat_template=template if isinstance(template, str) and template else None,
            max_batch_size=max_batch_size,
            queue_size=queue_size,
            api_key=api_key,
        )
        if not api_key and not _is_loopback(sock.getsockname()[0]):
            info(f"[yellow]warning:[/yellow] {host} is reachable from other machines and no --api-key is set; anyone who can reach it can use the model")
        url = url_of(sock)
        run(app, sock, f"serving {name}: chat page {url}, API {url}v1{' (key required)' if api_key else ''}; Ctrl-C stops")
    finally:
        sock.close()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
