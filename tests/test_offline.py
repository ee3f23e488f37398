"""The tests run with the network cut off (tools/offline), so a download would fail loudly."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest


def test_connecting_to_another_host_is_refused_in_the_test_process():
    with pytest.raises(ConnectionRefusedError, match="runs offline"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)  # TEST-NET-1: never routed


def test_subprocesses_such_as_notebook_kernels_are_offline_too():
    code = "import socket; socket.create_connection(('198.51.100.7', 443), timeout=1)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0 and "runs offline" in proc.stderr


def test_loopback_still_works():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    with socket.create_connection(server.getsockname(), timeout=1):
        pass
    server.close()
