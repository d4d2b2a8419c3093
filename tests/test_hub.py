"""The hub fail-fast check: offline variables, an endpoint that refuses, a cached copy."""

from __future__ import annotations

import socket

import pytest

from hopekit import hub


@pytest.fixture()
def online_env(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_ENDPOINT", *PROXIES):
        monkeypatch.delenv(var, raising=False)
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def test_behind_a_proxy_the_direct_probe_is_skipped(online_env, monkeypatch):
    def refuse(address, timeout):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(ValueError, match="unreachable"):
        hub.check_hub_access("x", what="a dataset", cached=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    hub.check_hub_access("x", what="a dataset", cached=False)   # the library's request through the proxy decides


def test_offline_variables_are_read_now(online_env, monkeypatch):
    assert hub.offline_variable(("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")) is None
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "yes")
    assert hub.offline_variable(("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")) == "HF_DATASETS_OFFLINE"
    assert hub.offline_variable(("HF_HUB_OFFLINE",)) is None          # a model is not a dataset
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    assert hub.offline_variable(("HF_DATASETS_OFFLINE",)) is None


def test_the_endpoint_is_tried_once_and_a_cached_copy_skips_it(online_env, monkeypatch):
    calls = []

    def refuse(address, timeout):
        calls.append((address, timeout))
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example:8443/")
    expected = (r"^x='y': a thing with no cached copy, and the hub \(https://hub.example:8443\) is unreachable "
                r"\(Connection refused\); do this$")
    with pytest.raises(ValueError, match=expected):
        hub.check_hub_access("x='y'", what="a thing", advice="do this")
    assert calls == [(("hub.example", 8443), hub.HUB_TIMEOUT)]
    hub.check_hub_access("x='y'", cached=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.check_hub_access("x='y'", cached=True)
    assert len(calls) == 1


def test_a_timeout_is_named(online_env, monkeypatch):
    def silent(address, timeout):
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", silent)
    with pytest.raises(ValueError, match=r"hub \(https://huggingface.co\) is unreachable \(timed out\)"):
        hub.check_hub_access("x")


def test_a_reachable_hub_passes(online_env, monkeypatch):
    class Conn:
        def close(self):
            pass

    monkeypatch.setattr(socket, "create_connection", lambda address, timeout: Conn())
    hub.check_hub_access("x")
