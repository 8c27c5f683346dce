#!/usr/bin/env python3
"""Runs tinyFaaS's own test suite (test/test_all.py, unchanged) against `ufaas serve`.

Run from a directory laid out as tinyFaaS's checkout (test/, scripts/, pkg/grpc/tinyfaas/),
as tox-like-scripts/tinyfaas-suite makes it. Only the module's set-up and tear-down are
replaced: they start and stop `ufaas serve` (UFAAS_BIN, on a temporary database, on
tinyFaaS's ports 8080, 8000, 9000 and 5683) instead of tinyFaaS's binary and `make clean`.
Every test, and upload.sh and wipe-functions.sh that it calls, run as upstream wrote them.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.getcwd(), "test"))
import test_all  # noqa: E402  (upstream's module, found on the path just set)

UFAAS = os.environ["UFAAS_BIN"]
LOG = os.environ.get("UFAAS_LOG", os.path.join(os.getcwd(), "ufaas.log"))
START_TIMEOUT = 60.0
PORT_WAIT = 300.0

_state: dict = {}


def _port_free(port: int, kind: int) -> bool:
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def setUpModule() -> None:
    """Starts ufaas serve where tinyFaaS would listen, and waits until it answers."""
    c = test_all.connection
    ports = (
        (c["management_port"], socket.SOCK_STREAM),
        (c["http_port"], socket.SOCK_STREAM),
        (c["grpc_port"], socket.SOCK_STREAM),
        (c["coap_port"], socket.SOCK_DGRAM),
    )
    # upload.sh and wipe-functions.sh name port 8080 themselves, so the ports are fixed; a
    # test elsewhere on the machine may hold one for a while.
    deadline = time.monotonic() + PORT_WAIT
    while True:
        taken = [p for p, kind in ports if not _port_free(int(p), kind)]
        if not taken:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"ports {taken} are still taken after {PORT_WAIT} s: the suite needs tinyFaaS's ports")
        if "waited" not in _state:
            print(f"waiting for ports {taken} to be free", flush=True)
            _state["waited"] = True
        time.sleep(0.5)
    tmp = tempfile.mkdtemp(prefix="ufaas-tinyfaas-suite-")
    _state["tmp"] = tmp
    log = open(LOG, "w")
    _state["log"] = log
    cmd = [
        UFAAS,
        "serve",
        "--db",
        os.path.join(tmp, "ufaas.db"),
        "--listen",
        f"127.0.0.1:{c['management_port']}",
        "--gateway-listen",
        f"127.0.0.1:{c['http_port']}",
        "--grpc-listen",
        f"127.0.0.1:{c['grpc_port']}",
        "--coap-listen",
        f"127.0.0.1:{c['coap_port']}",
    ]
    test_all.tf_process = subprocess.Popen(cmd, stdout=log, stderr=log)
    deadline = time.monotonic() + START_TIMEOUT
    url = f"http://127.0.0.1:{c['management_port']}/healthz"
    while True:
        if test_all.tf_process.poll() is not None:
            raise RuntimeError(f"ufaas serve exited with {test_all.tf_process.returncode}; see {LOG}")
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"ufaas serve did not answer {url} within {START_TIMEOUT} s; see {LOG}")
            time.sleep(0.1)


def tearDownModule() -> None:
    """Wipes the functions as upstream does, then stops ufaas (which removes its containers)."""
    try:
        subprocess.run(
            ["./wipe-functions.sh"], cwd=test_all.script_path, check=True, capture_output=True
        )
    except subprocess.CalledProcessError as e:
        print(f"Failed to wipe functions:\n{e.stderr.decode('utf-8')}")
    p = test_all.tf_process
    if p is not None:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            print("ufaas serve did not stop within 60 s of SIGINT; killing it")
            p.kill()
            p.wait()
    if "log" in _state:
        _state["log"].close()


test_all.setUpModule = setUpModule
test_all.tearDownModule = tearDownModule


if __name__ == "__main__":
    runner = unittest.TextTestRunner(verbosity=2)
    suite = unittest.defaultTestLoader.loadTestsFromModule(test_all)
    if len(sys.argv) > 1:
        # Names as `TestEcho.test_invoke_grpc` or `TestEcho`.
        suite = unittest.defaultTestLoader.loadTestsFromNames(sys.argv[1:], test_all)
    result = runner.run(suite)
    problems = result.failures + result.errors
    # A set-up that failed (a class's upload, the server's start) is one failure of its own;
    # the tests it held did not run.
    failed_tests = [t for t, _ in problems if isinstance(t, unittest.TestCase)]
    fixtures = len(problems) - len(failed_tests)
    skipped = len(result.skipped)
    failed = len(failed_tests) + len(result.unexpectedSuccesses)
    passed = result.testsRun - failed - skipped
    failed += fixtures
    print(f"tinyfaas-suite: {passed} passed, {failed} failed, {skipped} skipped")
    # A skipped test is not a pass: the suite skips its CoAP and gRPC tests when their packages
    # are missing, which here means the virtualenv is broken.
    sys.exit(0 if result.wasSuccessful() and not result.skipped else 1)
