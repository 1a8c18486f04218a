"""Listening addresses, key settings and the hash-key command."""

import hashlib
import io

import pytest
import redis
from pydantic import ValidationError

from service import commands
from service.cli import build_parser, main
from service.settings import Settings

HASH = hashlib.sha256(b"some-key").hexdigest()


@pytest.fixture
def no_uvicorn(monkeypatch):
    """Record uvicorn.run calls instead of serving."""
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    monkeypatch.setattr("service.app.create_app", lambda settings: object())
    for name in ("MAGIC_API_KEYS", "MAGIC_ALLOW_UNAUTHENTICATED_PUBLIC", "REDIS_URL",
                 "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_serve_defaults_to_loopback():
    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.5", "::1", "localhost"])
def test_loopback_needs_no_keys(host):
    assert commands.bind_problem(host, Settings()) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.org"])
def test_public_host_without_keys_rejected(host):
    problem = commands.bind_problem(host, Settings())
    assert f"--host {host} is not a loopback address" in problem
    assert "MAGIC_API_KEYS" in problem
    assert commands.bind_problem(host, Settings(api_keys=(HASH,))) is None
    assert commands.bind_problem(host, Settings(allow_unauthenticated_public=True)) is None
    assert commands.bind_problem(host, Settings(), allow_remote=True) is None


def test_serve_refuses_public_host(no_uvicorn, capsys):
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "MAGIC_ALLOW_UNAUTHENTICATED_PUBLIC=true" in capsys.readouterr().err
    assert no_uvicorn == []


def test_serve_public_host_with_keys(no_uvicorn, monkeypatch):
    monkeypatch.setenv("MAGIC_API_KEYS", HASH)
    assert main(["serve", "--host", "0.0.0.0", "--port", "8123"]) == 0
    assert no_uvicorn == [{"host": "0.0.0.0", "port": 8123, "log_level": "info"}]


def test_serve_public_host_with_opt_out(no_uvicorn, monkeypatch):
    monkeypatch.setenv("MAGIC_ALLOW_UNAUTHENTICATED_PUBLIC", "true")
    assert main(["serve", "--host", "0.0.0.0"]) == 0
    assert no_uvicorn[0]["host"] == "0.0.0.0"


def test_serve_rejects_plaintext_key_without_echo(no_uvicorn, monkeypatch, capsys):
    monkeypatch.setenv("MAGIC_API_KEYS", "plaintext-secret-key")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "MAGIC_API_KEYS entry 0 is not a SHA-256 hex digest" in err
    assert "plaintext-secret-key" not in err


@pytest.mark.parametrize("value", [f'["{HASH}", "{HASH.upper()}"]', f"{HASH}, {HASH.upper()}"])
def test_api_keys_from_environment(monkeypatch, value):
    monkeypatch.setenv("MAGIC_API_KEYS", value)
    assert Settings().api_keys == (HASH, HASH)


@pytest.mark.parametrize("value", ["", "[]", " , "])
def test_empty_api_keys_turn_auth_off(monkeypatch, value):
    monkeypatch.setenv("MAGIC_API_KEYS", value)
    assert Settings().api_keys == ()


@pytest.mark.parametrize("value", [HASH[:-1], HASH[:-1] + "g", "[" + HASH, '["abc"]'])
def test_invalid_api_keys_rejected(monkeypatch, value):
    monkeypatch.setenv("MAGIC_API_KEYS", value)
    with pytest.raises(ValidationError) as error:
        Settings()
    assert "MAGIC_API_KEYS" in str(error.value)
    assert value not in str(error.value)


def test_hash_key_reads_standard_input(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("some-key\n"))
    assert main(["hash-key"]) == 0
    assert capsys.readouterr().out.strip() == HASH


def test_hash_key_rejects_empty_key(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert main(["hash-key"]) == 2
    assert "empty" in capsys.readouterr().err


def test_hash_key_generates_key(capsys):
    assert main(["hash-key", "--generate"]) == 0
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    key, digest = lines["key"].strip(), lines["hash"].strip()
    assert len(key) >= 40
    assert digest == hashlib.sha256(key.encode()).hexdigest()


def test_embedded_redis_listens_on_unix_socket_only(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.config_get("port") == {"port": "0"}
        assert client.config_get("unixsocketperm") == {"unixsocketperm": "700"}
    finally:
        client.close()
