"""`scratchlm serve`: an OpenAI-compatible HTTP API over the generation engine, and a chat page.

    client ──HTTP──▶ app.py (FastAPI, event loop) ──Job──▶ worker.py (one thread) ──▶ Engine.step()
           ◀──JSON / SSE── asyncio.Queue per request ◀──call_soon_threadsafe── deltas

- `schemas.py` checks request bodies (OpenAI's fields, our sampling extensions) and says what is
  wrong in OpenAI's error shape (`errors.py`); `responses.py` writes OpenAI's response shapes.
- `worker.py` owns the `Engine` on one thread, so requests from any number of connections share
  one continuous batch; the event loop never runs the model. The wait for a row is bounded: a
  full queue answers 503 at once instead of letting clients hang.
- `app.py` is the routes, the bearer-key check and the page (`page.html`, one self-contained
  file); `server.py` binds the port and runs uvicorn; `command.py` is the CLI command.

fastapi and uvicorn are an optional extra (`pip install 'scratchlm[serve]'`): nothing here is
imported by the rest of scratchlm, and the command imports it only when it runs.
"""
