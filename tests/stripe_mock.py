"""stripe-mock for the tests, provided as the suite provides Kafka: found or built, run
for the tests that need it, stopped after them.

stripe-mock is Stripe's official mock of its API (a Go program): it checks every
request against Stripe's OpenAPI description (paths, parameters, types) and answers
with fixtures, reflecting some parameters. It keeps no state: a PaymentIntent it
"created" cannot be found again, nothing is declined, no idempotency key is remembered.

The binary, in this order: `$STRIPE_MOCK`; `.stack/bin/stripe-mock` (built here
before); `~/go/bin/stripe-mock`; `stripe-mock` on the PATH; else, when Go exists, it is
built once into `.stack/bin` with `go install github.com/stripe/stripe-mock@<pin>`
(about 90 s, through the Go module proxy); else the tests are skipped, saying so.

Fixtures: Stripe's own (bundled) answer every PaymentIntent as `requires_payment_method`
with a failed attempt, i.e. declined. `stripe_mock_fixtures.json` beside this file holds
the pinned version's bundled PaymentIntent (made `succeeded`, so a purchase can
complete), Transfer and TransferReversal: every fixture the adapters' calls need (with
a fixture file, stripe-mock knows no other resource).
"""

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

STRIPE_MOCK_MODULE = "github.com/stripe/stripe-mock"
STRIPE_MOCK_VERSION = "v0.203.0"
REPO = Path(__file__).resolve().parent.parent
BUILT = REPO / ".stack" / "bin" / "stripe-mock"
SUCCEEDING_FIXTURES = Path(__file__).with_name("stripe_mock_fixtures.json")
TEST_KEY = "sk_test_123"  # stripe-mock takes any key that looks like a test key
_LISTENING = re.compile(r"Listening for HTTP at address: (\S+)")


def find_binary() -> Path | None:
    """A stripe-mock already on this machine, if any."""
    candidates = [os.environ.get("STRIPE_MOCK"), BUILT, Path.home() / "go" / "bin" / "stripe-mock"]
    for candidate in [*candidates, shutil.which("stripe-mock")]:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def build_binary() -> Path:
    """Build the pinned stripe-mock into `.stack/bin` (once); skip without Go."""
    go = shutil.which("go")
    if go is None:
        pytest.skip(
            "stripe-mock needs Go to be built (go install "
            f"{STRIPE_MOCK_MODULE}@{STRIPE_MOCK_VERSION}), and neither Go nor a "
            "stripe-mock binary ($STRIPE_MOCK, ~/go/bin, PATH) was found"
        )
    BUILT.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [go, "install", f"{STRIPE_MOCK_MODULE}@{STRIPE_MOCK_VERSION}"],
        env={**os.environ, "GOBIN": str(BUILT.parent)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0 or not BUILT.is_file():
        pytest.fail(f"building stripe-mock failed:\n{done.stderr[-2000:]}")
    return BUILT


@contextlib.contextmanager
def running(fixtures: Path | None = None) -> Iterator[str]:
    """Run stripe-mock on free local ports (its own fixtures, or `fixtures`); yields its
    base URL once it answers, and stops it afterwards."""
    binary = find_binary() or build_binary()
    # Both listeners on ports the system picks: with an HTTP address alone, stripe-mock
    # also opens HTTPS on its fixed default port, which a second instance cannot take.
    command = [str(binary), "-http-addr", "127.0.0.1:0", "-https-addr", "127.0.0.1:0"]
    if fixtures is not None:
        command += ["-fixtures", str(fixtures)]
    with tempfile.TemporaryDirectory(prefix="stripe-mock-") as folder:
        log = Path(folder) / "stripe-mock.log"
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield _wait_until_answering(process, log)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_answering(process: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"stripe-mock exited: {log.read_text(errors='replace')}")
        found = _LISTENING.search(log.read_text(errors="replace"))
        if found and _answers(url := f"http://{found.group(1)}"):
            return url
        time.sleep(0.05)
    raise RuntimeError(f"stripe-mock did not answer in 30 s: {log.read_text(errors='replace')}")


def _answers(url: str) -> bool:
    try:
        response = httpx.get(f"{url}/v1/transfers?limit=1", auth=(TEST_KEY, ""), timeout=2)
    except httpx.HTTPError:
        return False
    return response.status_code == 200
