"""What the Python benchmarks share: free loopback ports and a private
Mosquitto on one of them (loopback only, never the LAN)."""
import os
import shutil
import socket
import subprocess
import sys
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on 127.0.0.1:{port}")


class Mosquitto:
    """A private broker on a free port; `stop()` ends it."""

    def __init__(self, work, extra=""):
        path = next((p for p in ("/usr/sbin/mosquitto", shutil.which("mosquitto") or "")
                     if p and os.path.exists(p)), None)
        if path is None:
            sys.exit("mosquitto is not installed (apt-get install mosquitto)")
        self.port = free_port()
        conf = os.path.join(work, f"mosquitto-{self.port}.conf")
        with open(conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                    f"persistence false\n{extra}")
        self.proc = subprocess.Popen([path, "-c", conf], stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
