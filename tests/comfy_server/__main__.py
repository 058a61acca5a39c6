"""Run the fake ComfyUI server: ``python -m tests.comfy_server --port 0 --root DIR``.

Prints ``LISTENING <port>`` on stdout once bound, then serves until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import ssl
import sys
from pathlib import Path

from aiohttp import web

from tests.comfy_server.app import ServerState, make_app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.comfy_server", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--root", required=True, help="the ComfyUI folder (output/, input/, temp/, models/)")
    p.add_argument("--object-info", help="serve this object_info JSON file instead of the bundled one")
    p.add_argument("--max-upload-size", type=float, default=None, help="MB, like ComfyUI's option")
    p.add_argument("--auth-header", default="Authorization")
    p.add_argument("--auth-value", default=None, help="require this exact header value (e.g. 'Bearer t')")
    p.add_argument("--auth-token", default=None, help="shorthand for --auth-value 'Bearer TOKEN'")
    p.add_argument("--step-delay", type=float, default=0.001, help="seconds per simulated training step")
    p.add_argument("--native-progress", action="store_true",
                   help="TrainLoraNode reports progress per optimizer step (ComfyUI after 0.3.64; 0.3.64 does not)")
    p.add_argument("--without-fluxtrainer", action="store_true",
                   help="a ComfyUI without the FluxTrainer node pack (its nodes neither listed nor run)")
    p.add_argument(
        "--models",
        choices=("fake", "empty", "none"),
        default="fake",
        help="placeholder model files: tiny valid (fake), 0 bytes as recorded (empty), none",
    )
    p.add_argument("--tls-certfile", default=None, help="serve https/wss with this certificate (as ComfyUI does)")
    p.add_argument("--tls-keyfile", default=None, help="the certificate's private key")
    p.add_argument("--frontend", default=None, metavar="DIR",
                   help="serve this built ComfyUI frontend (its web root, with index.html) at /")
    p.add_argument("--log-level", default="WARNING")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    auth = None
    value = args.auth_value or (f"Bearer {args.auth_token}" if args.auth_token else None)
    if value is not None:
        auth = (args.auth_header, value)
    object_info = None
    if args.object_info:
        object_info = json.loads(Path(args.object_info).read_text(encoding="utf-8"))
    state = ServerState(
        Path(args.root),
        object_info=object_info,
        max_upload_size=args.max_upload_size,
        auth=auth,
        step_delay=args.step_delay,
        native_progress=args.native_progress,
        without_fluxtrainer=args.without_fluxtrainer,
        frontend_dir=Path(args.frontend) if args.frontend else None,
    )
    state.paths.create(args.models)
    app = make_app(state)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    ssl_context = None
    if args.tls_certfile and args.tls_keyfile:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(args.tls_certfile, args.tls_keyfile)
    site = web.TCPSite(runner, args.host, args.port, reuse_address=True, ssl_context=ssl_context)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    sites = [site]

    async def relisten(downtime: float) -> None:
        await sites[0].stop()
        await asyncio.sleep(downtime)
        new_site = web.TCPSite(runner, args.host, port, reuse_address=True, ssl_context=ssl_context)
        await new_site.start()
        sites[0] = new_site

    state.relisten = relisten
    state.start_tasks()
    sys.stdout.write(f"LISTENING {port}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.WARNING), stream=sys.stderr)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
