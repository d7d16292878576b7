"""`bnpp serve` (the edge, over TCP) and `bnpp infer` (the device, its client): deploy.server, deploy.client."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import (check_outputs, ErasureOpt, FlipOpt, JsonOpt, SeedOpt, SnrOpt, ThreadsOpt, TokenOpt, TopOpt, link_condition,
                      write_json_output)


def _log_event(console, event: dict) -> None:
    if event.get("ok", True) and event["event"] == "request":
        console.print(f"request: {event['images']} image(s) in a batch of {event['batch']}, "
                      f"queue {event['queue_ms']:.2f} ms, edge {event['edge_ms']:.2f} ms")
    else:
        console.print(f"[yellow]refused:[/] {event['error']}")


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        deploy: Annotated[Path, typer.Argument(help="Directory with edge.safetensors (the device half is not needed).")],
        host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="TCP port (0: any free port).")] = 8470,
        token: TokenOpt = None,
        max_batch: Annotated[int, typer.Option(help="Micro-batching: most images per decoder + tail call.")] = 32,
        batch_window_ms: Annotated[float, typer.Option(
            help="Micro-batching: how long a request waits for others (0: no waiting).")] = 2.0,
        max_images: Annotated[int, typer.Option(help="Most images per request (bounds a frame's size).")] = 32,
        read_timeout: Annotated[float, typer.Option(help="Seconds a request may take to arrive whole.")] = 10.0,
        idle_timeout: Annotated[float, typer.Option(help="Seconds an idle keep-alive connection is kept.")] = 300.0,
        max_connections: Annotated[int, typer.Option(help="Most connections at once.")] = 1024,
        quiet: Annotated[bool, typer.Option("--quiet", help="No line per request on stderr.")] = False,
        threads: ThreadsOpt = 1,
    ):
        """Serve the edge half over TCP: wire frames in, decoder + tail, top classes out (Ctrl-C stops)."""
        from rich.console import Console

        from ..deploy.server import ServeConfig, run_server

        err = Console(stderr=True, highlight=False, soft_wrap=True)
        config = ServeConfig(deploy_dir=str(deploy), host=host, port=port, token=token, max_images=max_images,
                             max_batch=max_batch, batch_window_ms=batch_window_ms, read_timeout_s=read_timeout,
                             idle_timeout_s=idle_timeout, max_connections=max_connections, threads=threads)
        ready = lambda h, p: err.print(f"Serving {deploy} on {h}:{p} (auth: {'token' if token else 'none'}, "
                                       f"batch <= {max_batch} images within {batch_window_ms:g} ms, edge on "
                                       f"{threads} thread{'s' * (threads != 1)}); "
                                       f"Ctrl-C to stop")
        stats = run_server(config, ready=ready, on_event=None if quiet else lambda e: _log_event(err, e))
        mean_edge = stats.edge_ms_total / stats.batches if stats.batches else 0.0
        err.print(f"Stopped: {stats.requests} requests, {stats.images} images, {stats.errors} refused, "
                  f"{stats.connections} connections; mean batch {stats.to_dict()['mean_batch']:.1f} images, "
                  f"{mean_edge:.2f} ms per tail call")

    @app.command()
    def infer(
        deploy: Annotated[Path, typer.Argument(help="Directory with device.safetensors (the edge half is not needed).")],
        images: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, ...).")],
        server: Annotated[str, typer.Option("--server", help="The edge: HOST:PORT of `bnpp serve`.")],
        snr: SnrOpt = None,
        erasure: ErasureOpt = None,
        flip: FlipOpt = None,
        top: TopOpt = 5,
        token: TokenOpt = None,
        timeout: Annotated[float, typer.Option(help="Seconds to wait for the server.")] = 30.0,
        json_path: JsonOpt = None,
        seed: SeedOpt = 0,
        threads: ThreadsOpt = 1,
    ):
        """Run the device half here and the edge half on `bnpp serve`: same answers as `bnpp predict`."""
        check_outputs(json_path)  # every output path, before any work
        from ..deploy.client import infer_images
        from .render import render_remote_predictions

        name, condition = link_condition(snr, erasure, flip)
        results = infer_images(deploy, [str(p) for p in images], server, condition=condition, seed=seed,
                               condition_name=name, topk=top, token=token, timeout_s=timeout, threads=threads)
        write_json_output(json_path, [r.to_dict() for r in results])
        render_remote_predictions(results)
