"""`ptray ui`: the MLflow UI over an experiment folder's store, as a child process that lives exactly as long as
`ptray ui` does (Ctrl-C, SIGTERM or SIGHUP stop the server and its workers, never leave them listening)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def serve(uri: str, host: str, port: int) -> int:
    """Run `mlflow ui` on host:port until it exits or this process is told to stop; returns the exit code."""
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", "1"]
    # Its own process group, so stopping it reaches the web server's workers too.
    server = subprocess.Popen(cmd, start_new_session=True)

    def stop(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
