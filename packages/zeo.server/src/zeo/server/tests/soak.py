"""A memory soak of a real runzeo: connection churn for minutes, RSS sampled.

    bin/py -m zeo.server.tests.soak -- --minutes 10 --clients 8

(bin/py reads options up to ``--`` itself; ``python -m`` needs no ``--``.)

Starts ``runzeo`` on a FileStorage in a temporary directory, then runs
``zeo.server.tests.soaking.soak``: each client thread connects, commits
new revisions of its own objects, reads them back and disconnects, over
and over; one cycle in eight disconnects mid-transaction instead. The
server's resident memory and open descriptors are sampled every second.

At the end it prints the figures and checks, exiting 1 if one fails:

- memory is flat: the median RSS of the last quarter of the samples after
  the warm-up exceeds that of the first quarter by less than the
  tolerance (see ``soaking``);
- nothing leaked: the server counts no connection and holds no more
  descriptors than before the soak;
- no client saw an error or read anything but what it committed.

``--json FILE`` writes the samples and figures.  A test tool, as
``test_soak`` is (which soaks for seconds): it is not installed as a
script.
"""
import argparse
import json
import shutil
import sys
import tempfile

from zeo.server.tests.soaking import soak
from zeo.server.tests.support import ServerProcess

__all__ = ["main"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--warm-up", type=float, default=None,
                        help="seconds not judged (default: a fifth of the run, at most 120)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--json", help="write the samples and figures here")
    parser.add_argument("--keep", action="store_true", help="keep the server's directory")
    options = parser.parse_args()
    seconds = options.minutes * 60
    warm_up = options.warm_up if options.warm_up is not None else min(seconds / 5, 120.0)

    directory = tempfile.mkdtemp(prefix="zeo-soak-")
    server = ServerProcess(directory)
    failures = []
    try:
        result = soak(server, seconds, options.clients, warm_up, options.interval)
        connections = server.wait_connections(0)
        descriptors_after = server.descriptors()
    finally:
        status = server.stop()
    descriptors = result.descriptors_before
    first, last, growth, allowed = result.judge()
    print(f"soak: {options.clients} clients; {result.summary()}")
    print(f"soak: after the soak the server counts {connections} connections and holds"
          f" {descriptors_after} descriptors ({descriptors} before); runzeo exited {status}")
    if growth >= allowed:
        failures.append(f"memory grew by {growth} KiB (allowed {allowed} KiB)")
    if connections != 0:
        failures.append(f"{connections} connections left")
    if descriptors_after > descriptors:
        failures.append(f"{descriptors_after - descriptors} descriptors leaked")
    failures += result.errors
    if options.json:
        with open(options.json, "w") as f:
            json.dump({"clients": options.clients, "seconds": result.seconds,
                       "warm_up": warm_up, "cycles": result.cycles, "commits": result.commits,
                       "loads": result.loads, "broken": result.broken,
                       "first_quarter_median_kib": first, "last_quarter_median_kib": last,
                       "samples": result.samples, "failures": failures}, f, indent=1)
    if options.keep:
        print(f"soak: kept {directory}")
    else:
        shutil.rmtree(directory, ignore_errors=True)
    for failure in failures:
        print(f"soak: FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
