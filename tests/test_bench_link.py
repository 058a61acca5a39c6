"""The bench's shaped link (bench/link.py) forwards every byte, both ways, in order: the network cases measure
lorawf through it, so it must never be the thing that breaks a transfer. No timing is asserted here."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tcp import tcp_server

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A TCP server that sends back the sha256 of everything it received, once the client half-closes."""
    def echo_digest(conn: socket.socket) -> None:
        with conn:
            digest = hashlib.sha256()
            while chunk := conn.recv(1 << 16):
                digest.update(chunk)
            conn.sendall(digest.hexdigest().encode() + b"\n" + b"x" * 3_000_000)

    with tcp_server(echo_digest) as port:
        yield port


def test_bytes_cross_the_link_whole_both_ways_with_a_small_window(echo_port: int) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "bench.link", "--upstream", str(echo_port), "--delay-ms", "2",
                             "--mbit", "800", "--window", "131072"], stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[1])
        payload = os.urandom(5_000_000)
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)  # the half-close crosses the link after the last byte
            answer = b""
            while chunk := conn.recv(1 << 16):
                answer += chunk
        digest, rest = answer.split(b"\n", 1)
        assert digest.decode() == hashlib.sha256(payload).hexdigest()
        assert rest == b"x" * 3_000_000
    finally:
        proc.terminate()
        proc.wait(timeout=10)
