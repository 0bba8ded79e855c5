"""The TensorBoard command we print, run for real: every logged grid and scalar of a run is served.

TensorBoard decides what a user sees (its reservoir sampling drops images beyond
``--samples_per_plugin``), and only its server can say what that is: the test starts the installed
``tensorboard`` with exactly the flags of ``engine.logger.TENSORBOARD_COMMAND`` on a loopback port
and compares its HTTP API with what the event files hold.
"""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from engine.logger import TENSORBOARD_COMMAND

TIMEOUT_S = 120  # start-up and the first load of the logdir, on a busy 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str, **query: str):
    url = f"http://127.0.0.1:{port}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _logged(tb: Path) -> tuple[set[str], dict[str, list[int]]]:
    """Every scalar tag, and every image tag with its steps, in the event files (nothing sampled away)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb), size_guidance={"scalars": 0, "images": 0}).Reload()
    images = {tag: [e.step for e in events.Images(tag)] for tag in events.Tags()["images"]}
    return set(events.Tags()["scalars"]), images


def _served(port: int, run: str) -> tuple[set[str], dict[str, list[int]]]:
    scalars = set(_get(port, "/data/plugin/scalars/tags").get(run, {}))
    tags = _get(port, "/data/plugin/images/tags").get(run, {})
    images = {tag: [e["step"] for e in _get(port, "/data/plugin/images/images", run=run, tag=tag)] for tag in tags}
    return scalars, images


def test_printed_command_serves_every_grid_and_scalar(logged_run: Path) -> None:
    scalars, images = _logged(logged_run / "tb")
    assert len(images["val/image_mask_pred_coarse"]) == 12 and {"train/loss", "val/Sm", "val/loss"} <= scalars
    logdir = logged_run.parent
    argv = shlex.split(TENSORBOARD_COMMAND.format(logdir=f"{logdir}/"))
    assert argv[0] == "tensorboard"
    argv[0] = str(Path(sys.executable).with_name("tensorboard"))  # the venv's, as `make demo` prints it
    port = _free_port()
    server = subprocess.Popen(
        [*argv, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = f"{logged_run.name}/tb"
    served, deadline = (set(), {}), time.monotonic() + TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            assert server.poll() is None, f"tensorboard exited: {server.communicate()[1][-2000:]}"
            try:
                if run in _get(port, "/data/runs"):
                    served = _served(port, run)
                    if served == (scalars, images):  # the first load can still be reading the files
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet
            time.sleep(1)
    finally:
        server.terminate()
        try:
            server.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()
    assert served[0] == scalars, f"scalar tags not served: {sorted(scalars - served[0])}"
    assert served[1] == images, f"logged image steps {images}, served {served[1]}"
