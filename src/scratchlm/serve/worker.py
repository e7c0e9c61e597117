"""The engine's thread: one background thread owns the `Engine` and steps it while there is work.

A step is a forward pass of the whole batch, milliseconds to seconds: on the event loop it would
stall every connection, so it runs here. One thread, because the point of the engine is that
every running request shares each forward pass, and its KV cache is not safe to share.

- Hand-over: the event loop `submit`s a prepared `Generation` (the handler runs `prepare`, so a
  bad request is a 400 before anything is queued). The worker takes new work under a
  `Condition`, steps the engine, and sends each `Delta` to its request's `asyncio.Queue` with
  the loop's `call_soon_threadsafe`. With nothing to do it sleeps on the `Condition`: no polling.
- Bounded: at most `max_batch_size` requests run and `queue_size` more wait. One more is
  refused at once (503 with Retry-After), so an overloaded server answers instead of piling up
  clients that time out.
- Cancelling: a client that goes away calls `Generation.cancel()`; the engine drops the request
  at its next step, which frees its row and its place.
- Failures: an exception from a step fails the requests in the engine (500, one log line) and the
  worker carries on with a fresh engine; requests not yet handed over are unaffected.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from scratchlm.errors import UserError
from scratchlm.generate.engine import Delta, Engine, Generation
from scratchlm.serve.errors import APIError

# The server's own log: a failure shows up among uvicorn's lines, in its format.
log = logging.getLogger("uvicorn.error")

RETRY_AFTER_S = 1
"""What a 503 asks a client to wait: a slot frees as soon as any running answer ends."""


def check_limits(max_batch_size: int, queue_size: int) -> None:
    if max_batch_size < 1:
        raise UserError(f"The batch size (--max-batch-size) is {max_batch_size}; it must be at least 1.")
    if queue_size < 0:
        raise UserError(f"The queue size (--queue-size) is {queue_size}; it must be 0 or more.")


@dataclass(eq=False)
class Job:
    """One request on its way through the worker: what it generates and where its deltas go."""

    generation: Generation
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Delta | APIError] = field(default_factory=asyncio.Queue)

    def put(self, item: Delta | APIError) -> None:
        """From the worker thread: hand `item` to the request's event loop."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.generation.cancel()

    async def deltas(self) -> AsyncIterator[Delta]:
        """The request's deltas up to its last (the one with a finish reason); an APIError if it failed."""
        while True:
            item = await self.queue.get()
            if isinstance(item, APIError):
                raise item
            yield item
            if item.finish_reason is not None:
                return


class Worker:
    """Runs an engine on its own thread and routes what each step produces to its requests."""

    def __init__(self, make_engine: Callable[[], Engine], queue_size: int) -> None:
        self._make_engine = make_engine
        self.engine = make_engine()
        self.capacity = self.engine.max_batch_size + queue_size
        """Requests running or waiting at most."""
        self.running = 0
        """Rows in the batch after the last step."""
        self._wake = threading.Condition()
        self._incoming: list[Job] = []
        """Submitted, not yet handed to the engine (only the worker thread touches the engine)."""
        self._jobs: dict[Generation, Job] = {}
        """Every request accepted and not finished: the routing table, and the count that bounds the queue."""
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="scratchlm-engine", daemon=True)

    @property
    def waiting(self) -> int:
        with self._wake:
            return max(len(self._jobs) - self.running, 0)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current step; requests still in the worker get a 503."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout)

    def submit(self, generation: Generation) -> Job:
        """Queue a prepared generation (call on the event loop); a 503 when there is no room."""
        job = Job(generation, asyncio.get_running_loop())
        with self._wake:
            if self._closed:
                raise APIError(503, "The server is shutting down; send the request again once it is back.", type="server_error", code="shutting_down")
            if len(self._jobs) >= self.capacity:
                raise APIError(
                    503,
                    f"The server is busy: {len(self._jobs)} requests are running or waiting, as many as it takes; retry in a moment.",
                    type="server_error",
                    code="server_busy",
                    headers={"Retry-After": str(RETRY_AFTER_S)},
                )
            self._jobs[generation] = job
            self._incoming.append(job)
            self._wake.notify()
        return job

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._incoming and self.engine.idle:
                    self._wake.wait()
                if self._closed:
                    break
                incoming, self._incoming = self._incoming, []
            for job in incoming:
                self.engine.enqueue(job.generation)
            try:
                deltas = self.engine.step()
            except Exception as error:  # noqa: BLE001 - a failed step fails its requests, never the server
                self._fail_engine(error)
                continue
            self.running = len(self.engine.running)
            with self._wake:
                jobs = [self._jobs[delta.generation] for delta in deltas]
                for delta in deltas:
                    if delta.finish_reason is not None:
                        del self._jobs[delta.generation]
            for job, delta in zip(jobs, deltas):
                job.put(delta)
        with self._wake:
            left, self._jobs, self._incoming = list(self._jobs.values()), {}, []
        for job in left:
            job.generation.cancel()
            job.put(APIError(503, "The server shut down before this answer was finished.", type="server_error", code="shutting_down"))

    def _fail_engine(self, error: Exception) -> None:
        """Fail every request the engine held (a step runs them all at once) and start afresh."""
        with self._wake:
            not_handed_over = set(self._incoming)
            failed = [job for job in self._jobs.values() if job not in not_handed_over]
            for job in failed:
                del self._jobs[job.generation]
        first_line = (str(error).strip().splitlines() or [""])[0]
        log.error("the engine failed (%s: %s); %d request(s) got a 500, and the server goes on with a fresh engine", type(error).__name__, first_line, len(failed))
        self.engine = self._make_engine()
        self.running = 0
        for job in failed:
            job.put(APIError(500, f"Generation failed on the server ({type(error).__name__}); the server logged it and keeps serving, so a retry may work.", type="server_error", code="engine_error"))
