"""Test-wide setup: several CPU devices (so sharding is exercised on every run) and no network.

XLA reads the device count when the backend starts, so it is set here, before
any test imports jax; subprocesses the tests start inherit it.
"""

from __future__ import annotations

import ipaddress
import os
import socket

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import zoo.data  # noqa: E402
from zoo import registry  # noqa: E402

N_DEVICES = 8


def _is_loopback(address) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return isinstance(address, str | bytes)  # AF_UNIX paths are local


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any connection beyond loopback fails loudly: tests must pass offline."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guarded(real):
        def connect(self, address):
            if not _is_loopback(address):
                raise OSError(f"network access blocked in tests: {address!r}")
            return real(self, address)

        return connect

    monkeypatch.setattr(socket.socket, "connect", guarded(real_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guarded(real_connect_ex))


@pytest.fixture(autouse=True)
def _fresh_registry():
    """Each test discovers plugins and catalogues anew (some install or remove them)."""
    registry.reset()
    yield
    registry.reset()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``mnist`` (or ``shakespeare``) skip, with the reason, when the dataset is not cached."""
    for dataset in ("mnist", "shakespeare"):
        if zoo.data.is_cached(dataset):
            continue
        skip = pytest.mark.skip(reason=f"{dataset} is not cached: run `zoo data fetch {dataset}` (.ci/run does)")
        for item in items:
            if dataset in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def tiny_mnist() -> dict[str, np.ndarray]:
    """256 random 28x28 'digits' with MNIST's keys, shapes and dtypes."""
    return zoo.data.synthetic("mnist", 256)
