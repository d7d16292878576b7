"""What an edge server computes: a request body in, answers out (the worker thread's side).

    Backend.prepare(body, request) -> inputs (N, ...), params (N,)      one request
    Backend.forward(inputs, params) -> logits                           one micro-batch
    compute_batch(backend, jobs) -> answers                             prepare each, forward once, split

``BnppBackend`` is the edge half: wire frame -> the simulated air interface exactly as
`bnpp predict` applies it (link.receiver) -> decoder + tail.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from ..errors import BnppError, ServeError
from ..link import wire
from ..link.transmit import frame_bytes
from .halves import EdgeHalf
from .protocol import ReadExactly, Request, read_frame


class Backend:
    """How an edge server frames, prepares and computes a request body.

    ``read_body`` runs on the event loop; ``prepare`` (one request -> inputs (N, ...) and channel
    parameters (N,)) and ``forward`` (a batch of inputs -> logits) run in the worker thread."""

    classes: list[str]
    max_images: int
    max_body_bytes: int

    async def read_body(self, readexactly: ReadExactly) -> bytes:
        return await read_frame(readexactly, self.max_body_bytes)

    def count_images(self, body: bytes) -> int:
        """Images in a body read by ``read_body`` (a wire frame: its shape[0]), for batching."""
        return max(1, wire.leading_dim(body))

    def prepare(self, body: bytes, request: Request) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, inputs: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class BnppBackend(Backend):
    """The edge half: wire frame -> air interface (as predict) -> decoder + tail."""

    def __init__(self, edge: EdgeHalf, max_images: int = 32):
        self.edge, self.max_images = edge, max_images
        self.classes = edge.class_names
        self.max_body_bytes = frame_bytes(edge.code_shape, edge.channel, max_images)

    def prepare(self, body: bytes, request: Request) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.edge.receive(body)
        n = z.shape[0]
        if z.is_floating_point() and not bool(torch.isfinite(z).all()):
            bad = int((~torch.isfinite(z)).sum())
            raise ServeError(f"frame holds {bad} non-finite symbols (NaN or Inf): a code is finite by construction")
        if not 1 <= n <= self.max_images:
            raise ServeError(f"frame holds {n} images: valid is 1 to {self.max_images}")
        cond = request.condition
        param = 0.0 if cond is None else self.edge.param_from_condition(cond)
        z_hat = self.edge.pad(self.edge.air(z, param, request.seed, request.first_index))  # prefixes batch padded
        return z_hat, torch.full((n,), param, dtype=torch.float64)

    def forward(self, inputs: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return self.edge(inputs, params)


def compute_batch(backend: Backend, bodies: Sequence[tuple[bytes, Request]]) -> tuple[list[dict[str, Any]], int, float]:
    """Prepare each request, one forward for all of them, split the answers.

    Returns (answers, images computed, edge ms). A request that cannot be prepared gets its own
    refusal; a failing forward refuses the batch, and the server keeps serving."""
    start = time.perf_counter()
    answers: list[dict[str, Any]] = [{} for _ in bodies]
    ready, images = [], 0
    with torch.inference_mode():
        for k, (body, request) in enumerate(bodies):
            try:
                ready.append((k, *backend.prepare(body, request)))
            except BnppError as e:
                answers[k] = {"ok": False, "error": str(e)}
        try:
            if ready:
                probs = backend.forward(torch.cat([r[1] for r in ready]), torch.cat([r[2] for r in ready])).softmax(1)
                images = probs.shape[0]
        except Exception as e:  # a bug must not take the server down: answer, keep serving
            message = f"edge computation failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            for k, *_ in ready:
                answers[k] = {"ok": False, "error": message}
            ready = []
    row = 0
    for k, inputs, _ in ready:
        n, topk = inputs.shape[0], min(bodies[k][1].topk, probs.shape[1])
        p, i = probs[row:row + n].topk(topk, dim=1)
        row += n
        answers[k] = {"ok": True, "predictions": [[[backend.classes[c], v] for v, c in zip(pv, iv)]
                                                   for pv, iv in zip(p.tolist(), i.tolist())],
                      "images": n, "batch": images}
    return answers, images, 1e3 * (time.perf_counter() - start)
