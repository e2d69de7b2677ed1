"""`siren-ensemble serve` on loopback for the load benchmarks: a free port, and a server started and waited for."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def start_server(config, port: int, options: list[str], ready_timeout_s: float) -> subprocess.Popen:
    """The service on ``HOST:port`` once ``/readyz`` answers 200; RuntimeError if it exits or is not ready in time."""
    command = [sys.executable, "-m", "siren_ensemble", "serve", "--config", str(config), "--host", HOST,
               "--port", str(port), "--log-level", "warning", *options]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + ready_timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read().decode()}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"server not ready in {ready_timeout_s:g} s")
        try:
            if httpx.get(f"http://{HOST}:{port}/readyz").status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
