"""Cut Python off from the network, loopback excepted, for every process the tests start.

The root conftest.py puts this folder on PYTHONPATH, so the notebook kernels that nbval starts, the
site build and any subprocess import it at start-up. A connection to any address other than the
loopback raises ``OfflineError`` with the address, so "nothing at run time reaches the network"
is checked rather than hoped for.
"""

import ipaddress
import socket

_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


class OfflineError(ConnectionRefusedError):
    pass


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # a Unix-domain socket path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it would need a DNS look-up, which is the network


def _guarded(original):
    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address):
            raise OfflineError(f"the book runs offline, but code tried to connect to {address!r}")
        return original(self, address)

    return connect


socket.socket.connect = _guarded(_connect)
socket.socket.connect_ex = _guarded(_connect_ex)
