"""A real `whale serve` on a free loopback port, for the Python test suites (SDK and browser)."""
import os
import socket
import subprocess
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
WHALE = os.path.join(ROOT, "target", "release", "whale")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_server(model, *extra):
    """Starts `whale serve --model MODEL ...`; returns (process, base URL) once /health answers."""
    port = free_port()
    proc = subprocess.Popen(
        [WHALE, "serve", "--model", model, "--port", str(port), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(400):
        try:
            urllib.request.urlopen(base + "/health", timeout=1)
            return proc, base
        except Exception:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("whale serve did not come up: " + proc.stderr.read().decode())


def stop_server(proc):
    proc.terminate()  # SIGTERM: graceful shutdown
    assert proc.wait(timeout=20) == 0
