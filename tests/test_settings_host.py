"""OLLAMA_HOST is read as the official `ollama` client reads it, and printed URLs hide passwords."""

from __future__ import annotations

import doctest

import httpx
import pytest
from ollama._client import _parse_host

import helpers.settings
from conftest import free_port
from helpers.backends import OllamaBackend, OpenAIBackend
from helpers.connection import connect, connect_large
from helpers.errors import BackendUnavailable, BadInput
from helpers.serving.launcher import ensure_server
from helpers.settings import get_settings, normalise_host, redact_url

# The doctest table of the client's `_parse_host` (ollama-python), input -> URL.
CLIENT_TABLE = [
    (None, "http://127.0.0.1:11434"),
    ("", "http://127.0.0.1:11434"),
    ("1.2.3.4", "http://1.2.3.4:11434"),
    (":56789", "http://127.0.0.1:56789"),
    ("1.2.3.4:56789", "http://1.2.3.4:56789"),
    ("http://1.2.3.4", "http://1.2.3.4:80"),
    ("https://1.2.3.4", "https://1.2.3.4:443"),
    ("https://1.2.3.4:56789", "https://1.2.3.4:56789"),
    ("example.com", "http://example.com:11434"),
    ("example.com:56789", "http://example.com:56789"),
    ("http://example.com", "http://example.com:80"),
    ("https://example.com", "https://example.com:443"),
    ("https://example.com:56789", "https://example.com:56789"),
    ("example.com/", "http://example.com:11434"),
    ("example.com:56789/", "http://example.com:56789"),
    ("example.com/path", "http://example.com:11434/path"),
    ("example.com:56789/path", "http://example.com:56789/path"),
    ("https://example.com:56789/path", "https://example.com:56789/path"),
    ("example.com:56789/path/", "http://example.com:56789/path"),
    ("[0001:002:003:0004::1]", "http://[0001:002:003:0004::1]:11434"),
    ("[0001:002:003:0004::1]:56789", "http://[0001:002:003:0004::1]:56789"),
    ("http://[0001:002:003:0004::1]", "http://[0001:002:003:0004::1]:80"),
    ("https://[0001:002:003:0004::1]", "https://[0001:002:003:0004::1]:443"),
    ("https://[0001:002:003:0004::1]:56789", "https://[0001:002:003:0004::1]:56789"),
    ("[0001:002:003:0004::1]/", "http://[0001:002:003:0004::1]:11434"),
    ("[0001:002:003:0004::1]:56789/", "http://[0001:002:003:0004::1]:56789"),
    ("[0001:002:003:0004::1]/path", "http://[0001:002:003:0004::1]:11434/path"),
    ("[0001:002:003:0004::1]:56789/path", "http://[0001:002:003:0004::1]:56789/path"),
    ("https://[0001:002:003:0004::1]:56789/path", "https://[0001:002:003:0004::1]:56789/path"),
    ("[0001:002:003:0004::1]:56789/path/", "http://[0001:002:003:0004::1]:56789/path"),
]


@pytest.mark.parametrize("raw,expected", CLIENT_TABLE)
def test_host_is_parsed_like_the_ollama_client(raw, expected):
    assert normalise_host(raw) == expected
    assert _parse_host(raw) == expected  # the installed client agrees with the table


@pytest.mark.parametrize(
    "raw,expected",
    [
        # the cases: an address with 0.0.0.0 inside it, a proxy path, a scheme's own port
        ("100.0.0.0", "http://100.0.0.0:11434"),
        ("10.0.0.0:8080", "http://10.0.0.0:8080"),
        ("https://hub.example.org/user/ana/ollama", "https://hub.example.org:443/user/ana/ollama"),
        ("http://example.com", "http://example.com:80"),
        # a wildcard is where a server binds; as a place to connect to it means this machine
        ("0.0.0.0", "http://127.0.0.1:11434"),
        ("0.0.0.0:8080", "http://127.0.0.1:8080"),
        ("http://[::]:8080", "http://[::1]:8080"),
        ("::", "http://[::1]:11434"),
        ("::1", "http://[::1]:11434"),
        ("  localhost:8080  ", "http://localhost:8080"),
        ("HTTP://Example.COM", "http://example.com:80"),
        ("http://h:1/p?x=1#frag", "http://h:1/p"),
        ("https://ana:s3cret@hub.example.org/ollama", "https://ana:s3cret@hub.example.org:443/ollama"),
    ],
)
def test_course_additions(raw, expected):
    assert normalise_host(raw) == expected


@pytest.mark.parametrize(
    "raw,needle",
    [
        ("localhost:abc", "abc"),
        ("http://h:99999", "range"),
        ("ftp://h", "'ftp'"),
        ("http://h :1", "space"),
        ("https://ana:s3cret@h:xx", "ana:***@"),
    ],
)
def test_an_address_that_is_not_one_says_what_to_write(raw, needle):
    with pytest.raises(BadInput) as info:
        normalise_host(raw)
    assert needle in info.value.message and "OLLAMA_HOST" in info.value.hint
    assert "s3cret" not in str(info.value)


def test_the_docstring_table_runs():
    result = doctest.testmod(helpers.settings)
    assert result.attempted >= 35 and result.failed == 0


@pytest.mark.parametrize(
    "text,expected",
    [
        ("https://ana:s3cret@hub.example.org/ollama", "https://ana:***@hub.example.org/ollama"),
        ("http://tok3n@10.0.0.5:11434", "http://***@10.0.0.5:11434"),
        ("http://:pw@h:1", "http://***@h:1"),
        ("http://a:p@ss@h/x", "http://a:***@h/x"),  # an unescaped @ in the password
        (
            "no answer from http://u:pw@h:1 within 5 s; see https://ollama.com/download",
            "no answer from http://u:***@h:1 within 5 s; see https://ollama.com/download",
        ),
        ("http://127.0.0.1:11434/api/tags", "http://127.0.0.1:11434/api/tags"),
        ("mail ana@example.org", "mail ana@example.org"),
    ],
)
def test_redact_url(text, expected):
    assert redact_url(text) == expected


def test_settings_repr_hides_url_passwords(monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "https://ana:s3cret@hub.example.org/ollama")
    monkeypatch.setenv("SLM_LARGE_BASE_URL", "https://bob:hunter2@llm.example.org/v1")
    s = get_settings()
    assert s.ollama_host == "https://ana:s3cret@hub.example.org:443/ollama"  # kept to connect
    assert "s3cret" not in repr(s) and "hunter2" not in repr(s)
    assert "ana:***@hub.example.org" in repr(s)


@pytest.mark.parametrize("value", ["", "   ", "\t"])
def test_blank_serve_key_is_no_key(monkeypatch, value):
    monkeypatch.setenv("SLM_SERVE_API_KEY", value)
    assert get_settings().serve_api_key is None
    monkeypatch.setenv("SLM_SERVE_API_KEY", "  k3y  ")
    assert get_settings().serve_api_key.get_secret_value() == "k3y"


def test_messages_never_show_a_url_password(ollama_host, capsys, monkeypatch):
    """The launcher, connect and both backends print or raise with the password hidden."""
    port = httpx.URL(ollama_host).port
    assert ensure_server(f"http://ana:s3cret@127.0.0.1:{port}") is None  # the session's server
    down = f"127.0.0.1:{free_port()}"  # nothing listens there
    connect(f"http://ana:s3cret@{down}", verbose=True)  # falls back to the embedded engine
    with pytest.raises(BackendUnavailable) as ollama_error:
        OllamaBackend(f"http://ana:s3cret@{down}").version()
    with pytest.raises(BackendUnavailable) as openai_error:
        OpenAIBackend(base_url=f"http://bob:hunter2@{down}/v1", api_key="x", timeout=3, max_retries=0).list_models()
    monkeypatch.setenv("SLM_LARGE_BASE_URL", f"http://bob:hunter2@{down}/v1")
    tier = connect_large(verbose=True)
    out = capsys.readouterr().out
    for text in (out, str(ollama_error.value), str(openai_error.value), tier.reason, tier.backend.describe()):
        assert "s3cret" not in text and "hunter2" not in text, text
    assert f"A model server answers at http://ana:***@127.0.0.1:{port}" in out
    assert f"Ollama is not answering at http://ana:***@{down}" in out
    assert f"http://ana:***@{down}" in str(ollama_error.value)
    assert f"http://bob:***@{down}/v1" in str(openai_error.value) and "bob:***@" in out


@pytest.mark.slow  # the same doctor run as test_foundation's test_doctor_without_ollama_or_key_warns_with_fixes
def test_the_doctor_never_prints_a_password_from_ollama_host():
    import subprocess
    import sys

    from conftest import ROOT

    env = {**__import__("os").environ, "OLLAMA_HOST": f"http://ada:s3cr3t-pw@127.0.0.1:{free_port()}"}
    done = subprocess.run(
        [sys.executable, "-m", "helpers.cli", "doctor", "--skip-model"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "127.0.0.1" in done.stdout and "s3cr3t-pw" not in done.stdout + done.stderr
