"""Server settings: where to connect, with which credentials, and never showing them."""

from __future__ import annotations

import pytest

from lorawf.errors import UsageError
from lorawf.net.settings import DEFAULT_SERVER, ServerSettings, parse_header


def test_server_comes_from_the_option_then_the_environment_then_the_default() -> None:
    env = {"LORAWF_SERVER": "http://gpu-box:8188/"}
    assert ServerSettings.resolve("https://other:443", environ=env).base_url == "https://other:443"
    assert ServerSettings.resolve(None, environ=env).base_url == "http://gpu-box:8188"
    assert ServerSettings.resolve(None, environ={}).base_url == DEFAULT_SERVER
    assert ServerSettings.resolve("gpu-box:8188", environ={}).base_url == "http://gpu-box:8188"


@pytest.mark.parametrize(("url", "ws"), [("http://h:8188", "ws://h:8188"), ("https://h/comfy", "wss://h/comfy")])
def test_websocket_scheme_follows_http(url: str, ws: str) -> None:
    assert ServerSettings.resolve(url, environ={}).ws_url == ws


def test_token_and_headers_go_on_requests_but_never_into_text() -> None:
    s = ServerSettings.resolve("https://h:8443/comfy/", ["X-Api-Key: k-123456"],
                               environ={"LORAWF_TOKEN": "tok-abcdef"})
    assert s.request_headers() == {"X-Api-Key": "k-123456", "Authorization": "Bearer tok-abcdef"}
    assert s.base_url == s.redacted_url == "https://h:8443/comfy"
    for secret in ("tok-abcdef", "k-123456"):
        assert secret not in repr(s)
    assert set(s.secret_values()) == {"k-123456", "tok-abcdef"}


def test_user_and_password_in_the_url_become_a_basic_header_and_leave_the_url() -> None:
    s = ServerSettings.resolve("https://ann:p%40ss@h:8443", environ={})
    assert s.request_headers() == {"Authorization": "Basic YW5uOnBAc3M="}  # ann:p@ss
    assert s.base_url == "https://h:8443"
    assert "p%40ss" not in repr(s) and "ann" not in repr(s)
    assert "Basic YW5uOnBAc3M=" in s.secret_values()


def test_a_query_string_is_refused_without_echoing_it() -> None:
    with pytest.raises(UsageError, match="query string") as info:
        ServerSettings.resolve("https://h/?key=sk-999999", environ={})
    assert "sk-999999" not in str(info.value)


def test_an_explicit_authorization_header_wins_over_the_token() -> None:
    s = ServerSettings.resolve(None, ["Authorization: Basic abc"], environ={"LORAWF_TOKEN": "t"})
    assert s.request_headers() == {"Authorization": "Basic abc"}


@pytest.mark.parametrize(("raw", "secret"), [("Bearer sk-999999", "sk-999999"), (": sk-999999", "sk-999999"),
                                             ("Bad Name: sk-999999", "sk-999999")])
def test_malformed_headers_are_usage_errors_that_do_not_echo_the_value(raw: str, secret: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_header(raw)
    assert secret not in str(info.value)


@pytest.mark.parametrize("url", ["ftp://h", "http://", "ws://h:1"])
def test_bad_server_urls(url: str) -> None:
    with pytest.raises(UsageError, match="expected http"):
        ServerSettings.resolve(url, environ={})
