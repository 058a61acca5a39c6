"""The lean download path: body straight to disk, resumable, and a clean hand-off to httpx when unsure."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lorawf.comfy.events import OutputFile
from lorawf.net import bulk_get, download, http
from lorawf.net.settings import ServerSettings
from tests.tcp import tcp_server


@pytest.fixture
def raw_server() -> Iterator[tuple[str, list[bytes], list[bytes]]]:
    """A one-shot-per-connection TCP server answering with the queued raw responses; records requests."""
    answers: list[bytes] = []
    seen: list[bytes] = []

    def answer(conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            seen.append(data)
            if answers:
                conn.sendall(answers.pop(0))

    with tcp_server(answer) as port:
        yield f"http://127.0.0.1:{port}", answers, seen


def fetch(url: str, part: Path, resume: int = 0, headers: dict[str, str] | None = None) -> Any:
    return bulk_get.get_to_file(url, "/view", {"filename": "a b.bin", "type": "output"}, headers or {}, None,
                                str(part), resume, threading.Event())


def test_body_is_written_and_the_request_is_well_formed(raw_server: Any, tmp_path: Path) -> None:
    url, answers, seen = raw_server
    answers.append(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"x\"\r\n\r\nhello")
    head, written = fetch(url, tmp_path / "p", headers={"Authorization": "Bearer t"})
    assert (head.status, written, head.headers["etag"]) == (200, 5, '"x"')
    assert (tmp_path / "p").read_bytes() == b"hello"
    request = seen[0].decode()
    assert request.startswith("GET /view?filename=a+b.bin&type=output HTTP/1.1\r\n")
    assert "Authorization: Bearer t\r\n" in request and "Connection: close" not in request  # kept alive


def test_a_cut_keeps_what_arrived_and_206_appends(raw_server: Any, tmp_path: Path) -> None:
    url, answers, _ = raw_server
    answers.append(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
    with pytest.raises(bulk_get.Interrupted) as info:
        fetch(url, tmp_path / "p")
    assert info.value.written == 5 and (tmp_path / "p").read_bytes() == b"01234"
    answers.append(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\nContent-Range: bytes 5-9/10\r\n\r\n56789")
    head, written = fetch(url, tmp_path / "p", resume=5, headers={"Range": "bytes=5-"})
    assert (head.status, written) == (206, 5)
    assert (tmp_path / "p").read_bytes() == b"0123456789"


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello world",
    b"HTTP/1.0 200 OK\r\n\r\nhello world",
    b"HTTP/1.0 200 OK\r\nContent-Length: 11\r\n\r\nhello world",
], ids=["chunked", "close-delimited", "http-1.0", "http-1.0-length"])
def test_every_body_framing_is_parsed(raw_server: Any, tmp_path: Path, answer: bytes) -> None:
    url, answers, _ = raw_server
    answers.append(answer)
    head, written = fetch(url, tmp_path / "p")
    assert (head.status, written) == (200, 11)
    assert (tmp_path / "p").read_bytes() == b"hello world"


def test_a_cut_chunked_body_keeps_what_arrived(raw_server: Any, tmp_path: Path) -> None:
    url, answers, _ = raw_server
    answers.append(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n10\r\nwor")
    with pytest.raises(bulk_get.Interrupted) as info:
        fetch(url, tmp_path / "p")
    assert (tmp_path / "p").read_bytes().startswith(b"hello")
    assert info.value.written >= 5


@pytest.mark.parametrize("content_range", ["bytes 0-9/10", "bytes 4-9/10", None])
def test_a_206_that_does_not_continue_the_partial_file_writes_nothing(
        raw_server: Any, tmp_path: Path, content_range: str | None) -> None:
    url, answers, _ = raw_server
    (tmp_path / "p").write_bytes(b"01234")
    extra = f"Content-Range: {content_range}\r\n" if content_range else ""
    answers.append(f"HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\n{extra}\r\nxxxxx".encode())
    with pytest.raises(bulk_get.RangeMismatch, match="partial file ends at 5"):
        fetch(url, tmp_path / "p", resume=5, headers={"Range": "bytes=5-"})
    assert (tmp_path / "p").read_bytes() == b"01234"


def test_a_garbled_status_line_is_a_cut_connection(raw_server: Any, tmp_path: Path) -> None:
    url, answers, _ = raw_server
    answers.append(b"SPDY/3 200 OK\r\n\r\n")
    with pytest.raises(bulk_get.Interrupted):
        fetch(url, tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_range_start_parses_content_range() -> None:
    assert bulk_get.range_start("bytes 5-9/10") == 5
    assert bulk_get.range_start("bytes 5-9/*") == 5
    assert bulk_get.range_start("items 5-9/10") is None
    assert bulk_get.range_start(None) is None


def test_header_injection_and_proxies_go_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(bulk_get.Unsupported, match="line break"):
        fetch("http://127.0.0.1:9", tmp_path / "p", headers={"X": "a\r\nEvil: 1"})
    monkeypatch.setenv("http_proxy", "http://proxy.example:3128")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert bulk_get.proxied("http://gpu-box:8188")


def test_error_status_returns_the_body(raw_server: Any, tmp_path: Path) -> None:
    url, answers, _ = raw_server
    answers.append(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    head, written = fetch(url, tmp_path / "p")
    assert (head.status, written) == (404, 0)
    assert not (tmp_path / "p").exists()


def test_download_file_falls_back_to_httpx(comfy_server: Any, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    (comfy_server.root / "output" / "big.bin").write_bytes(bytes(range(256)) * 4096)

    def unsupported(*_args: Any, **_kwargs: Any) -> Any:
        raise bulk_get.Unsupported("test")

    monkeypatch.setattr(bulk_get, "get_to_file", unsupported)

    async def go() -> Any:
        async with http.ComfyClient(ServerSettings(comfy_server.url)) as c:
            return await download.download_file(c, OutputFile("1", "files", "big.bin"), tmp_path, "p")

    event = asyncio.run(go())
    assert Path(event.path).read_bytes() == (comfy_server.root / "output" / "big.bin").read_bytes()


def test_a_resume_the_server_answers_from_elsewhere_starts_the_file_again(raw_server: Any, tmp_path: Path) -> None:
    url, answers, seen = raw_server
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / ".a.bin.part").write_bytes(b"01234")
    (dest / ".a.bin.part.etag").write_text('"v1"')
    answers.append(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\nContent-Range: bytes 0-9/10\r\n\r\nABCDEFGHIJ")
    answers.append(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nETag: \"v2\"\r\n\r\nABCDEFGHIJ")
    warnings: list[Any] = []

    async def go() -> list[str]:
        async with http.ComfyClient(ServerSettings(url)) as c:
            return await download.download_outputs(c, [OutputFile("1", "files", "a.bin")], dest, warnings.append, "p")

    assert asyncio.run(go()) == []
    assert (dest / "a.bin").read_bytes() == b"ABCDEFGHIJ"  # never 01234ABCDEFGHIJ
    assert b"Range: bytes=5-" in seen[0] and b"Range:" not in seen[1]
    assert any("cannot resume" in getattr(w, "message", "") for w in warnings)
    assert not [p.name for p in dest.iterdir() if p.name.startswith(".")]


@pytest.fixture
def keepalive_server() -> Iterator[tuple[str, dict[str, int]]]:
    """An HTTP/1.1 server that answers every request on a connection with ``hello`` and keeps it open."""
    counts = {"connections": 0, "requests": 0}

    def one(conn: socket.socket) -> None:
        counts["connections"] += 1
        with conn:
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                data = data.split(b"\r\n\r\n", 1)[1]
                counts["requests"] += 1
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")

    with tcp_server(one, threaded=True) as port:
        yield f"http://127.0.0.1:{port}", counts
    bulk_get.POOL.clear()


def test_one_connection_carries_one_download_after_another(keepalive_server: Any, tmp_path: Path) -> None:
    url, counts = keepalive_server
    for i in range(3):
        head, written = fetch(url, tmp_path / f"p{i}")
        assert (head.status, written) == (200, 5) and (tmp_path / f"p{i}").read_bytes() == b"hello"
    assert counts == {"connections": 1, "requests": 3}


def test_an_idle_connection_the_server_closed_is_replaced_once(raw_server: Any, tmp_path: Path) -> None:
    url, answers, seen = raw_server  # it closes every connection after one answer, which said nothing of it
    answers += [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst", b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond"]
    assert fetch(url, tmp_path / "a")[1] == 5
    assert fetch(url, tmp_path / "b")[1] == 6  # the pooled connection was dead: a new one, nothing lost
    assert (tmp_path / "b").read_bytes() == b"second" and len(seen) == 2
    bulk_get.POOL.clear()
