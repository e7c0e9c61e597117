"""The `scratchlm serve` command: parses its flags, then calls `scratchlm.serve.server.serve`.

Kept apart from cli.py so that the command tree never imports fastapi or uvicorn, which are an
optional extra; they are checked (one sentence on how to install them) only when it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from scratchlm.errors import UserError
from scratchlm.generate.layout import INFERENCE_DTYPE_HELP


def serve_command(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint directory, or a run directory (its latest checkpoint).")],
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 lets other machines in (set --api-key then).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on; 0 takes any free port (the URL printed says which).")] = 8000,
    model_name: Annotated[Optional[str], typer.Option(help="The model's name in the API (the `model` field). \\[default: the checkpoint directory's name]", show_default=False)] = None,
    max_batch_size: Annotated[int, typer.Option(help="Requests generated together in one batch at most.")] = 8,
    queue_size: Annotated[int, typer.Option(help="Requests that may wait for a row in the batch; more get 503 with Retry-After at once.")] = 16,
    api_key: Annotated[Optional[str], typer.Option(envvar="SCRATCHLM_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1 (the page asks for it).", show_default=False)] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    dtype: Annotated[str, typer.Option(help=INFERENCE_DTYPE_HELP)] = "auto",
) -> None:
    """Serve a checkpoint over an OpenAI-compatible HTTP API, with a chat page at /.

    Routes: GET / (the chat page), GET /health, GET /v1/models, POST /v1/completions and POST /v1/chat/completions, with "stream": true for server-sent events. Concurrent requests share one continuous batch. Needs the serve extra: pip install 'scratchlm\\[serve]'.

    Examples:

      scratchlm serve runs/speedrun/train    # then open http://127.0.0.1:8000/

      curl http://127.0.0.1:8000/v1/completions -H "Content-Type: application/json" -d '{"prompt": "ROMEO.", "max_tokens": 50}'

      SCRATCHLM_API_KEY=secret scratchlm serve runs/sft --host 0.0.0.0 --port 8080 --model-name shakespeare
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError("scratchlm serve needs fastapi and uvicorn; install them with: pip install 'scratchlm[serve]'") from None
    from scratchlm.serve.server import serve

    serve(checkpoint, host=host, port=port, model_name=model_name, max_batch_size=max_batch_size, queue_size=queue_size, api_key=api_key, device=device, dtype=dtype)
