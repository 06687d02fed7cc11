"""Logs the garbage collector's full collections, and any collection over 20 ms, of every Python process started
with ZZ_GCLOG=1, to /tmp/gclog.txt. Loaded through a .pth file in the virtualenv (a line ``import gclog_hook``), so
that it times the code before the change as well, which has no ``ferry_gc_pause_seconds``."""

import gc
import os
import sys
import time

_started = [0.0]


def _time_collection(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    paused_ms = (time.perf_counter() - _started[0]) * 1000
    if paused_ms > 20 or info["generation"] == 2:
        program = " ".join(sys.argv[:3])[-60:]
        with open("/tmp/gclog.txt", "a") as log:
            log.write(
                f"{time.time():.1f} pid={os.getpid()} {program} gen={info['generation']} {paused_ms:.1f}ms "
                f"collected={info['collected']}\n"
            )


if os.environ.get("ZZ_GCLOG"):
    gc.callbacks.append(_time_collection)
