"""Fuzz the server's decoder and dispatch: atheris if installed, else a
mutation loop.

    bin/py -m zeo.server.tests.fuzz_server -- --seconds 60
    PYTHONPATH="$(bin/py -c 'import os, sys; print(os.pathsep.join(sys.path[1:]))')" \
        /tmp/atheris-venv/bin/python -m zeo.server.tests.fuzz_server --seconds 600

An input is a byte string. Its first byte chooses the encoding (even:
msgpack ``M5``, odd: pickle ``Z5``); the rest is what a client sends after
the handshake. It goes through a real ``ServerConnection`` (framing, both
codecs, the restricted unpickler) and every event is dispatched to a real
``StorageSession`` on a real FileStorage by the harness of
``zeo.server.tests.fuzzing``, which checks the server's rules after every
call (see there). Every ``--check-every`` inputs the harness is closed
(``fstest``, the file reopened without its index) and a fresh one started.

A broken rule raises: atheris saves the input (``crash-*``) and stops;
the mutation loop prints the input and stops. Starting points are real
client sessions (``fuzzing.seed_streams``); with atheris, ``--corpus DIR``
keeps what it learns between runs, and other arguments go to libFuzzer
(``-artifact_prefix=DIR/`` for where crashing inputs are saved).

Under the atheris interpreter, the project's packages are found through
``bin/py``'s path, as above (same Python version required).  A test tool,
not installed as a script.
"""
import argparse
import logging
import os
import random
import shutil
import sys
import tempfile
import time

try:
    import atheris
except ImportError:
    atheris = None

__all__ = ["main"]


def import_harness():
    if atheris is None:
        from zeo.server.tests import fuzzing
        return fuzzing
    # Coverage feedback from our code: the protocol and the server.  Run
    # as a module, much of zeo.server is imported before this runs (its
    # package imports it), so what is loaded is instrumented after the
    # fact; an atheris without instrument_all only instruments the zeo
    # modules imported from here on.
    instrument_all = getattr(atheris, "instrument_all", None)
    if instrument_all is None:
        with atheris.instrument_imports(include=["zeo"]):
            from zeo.server.tests import fuzzing
        return fuzzing
    from zeo.server.tests import fuzzing
    instrument_all()
    return fuzzing


class Target:
    """One harness at a time, replaced every *check_every* inputs."""

    def __init__(self, fuzzing, check_every):
        self.fuzzing = fuzzing
        self.check_every = check_every
        self.root = tempfile.mkdtemp(prefix="zeo-fuzz-server-")
        self.harness = None
        self.inputs = self.calls = self.harnesses = 0
        self.outcomes = {}
        self.started = time.monotonic()

    def __call__(self, data):
        if self.harness is None:
            self.harnesses += 1
            directory = os.path.join(self.root, str(self.harnesses))
            os.mkdir(directory)
            self.harness = self.fuzzing.Harness(directory)
        self.inputs += 1
        encoding = "Z" if data[:1] and data[0] & 1 else "M"
        self.harness.serve_bytes(encoding, bytes(data[1:]))
        self.harness.reset()
        if self.inputs % self.check_every == 0:
            self.retire()

    def retire(self):
        harness, self.harness = self.harness, None
        if harness is not None:
            try:
                harness.close()
            finally:
                self.calls += harness.calls
                for kind, count in harness.outcomes.items():
                    self.outcomes[kind] = self.outcomes.get(kind, 0) + count
                shutil.rmtree(harness.directory, ignore_errors=True)

    def report(self):
        seconds = time.monotonic() - self.started
        print(f"fuzz_server: {self.inputs} inputs, {self.calls} calls dispatched in"
              f" {seconds:.0f} s ({'atheris' if atheris else 'mutation loop'});"
              f" outcomes {dict(sorted(self.outcomes.items()))}", flush=True)


def mutate(rng, data, seeds):
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        how = rng.randrange(6)
        at = rng.randint(0, len(data))
        if how == 0 and data:
            data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif how == 1:
            data[at:at] = rng.randbytes(rng.randint(1, 8))
        elif how == 2:
            del data[at:at + rng.randint(1, 16)]
        elif how == 3 and data:
            data[min(at, len(data) - 1)] = rng.choice([0, 1, 0x7f, 0x80, 0xff, 0xc1, 0x93, 0x52])
        elif how == 4:
            other = rng.choice(seeds)
            start = rng.randint(0, len(other))
            data[at:at] = other[start:start + rng.randint(1, 64)]
        else:
            data[at:at + 4] = rng.randint(0, 2**32 - 1).to_bytes(4, "big")
    return bytes(data)


def mutation_loop(target, seeds, seconds, seed):
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        data = mutate(rng, rng.choice(seeds), seeds) if rng.random() < 0.95 \
            else rng.randbytes(rng.randint(0, 200))
        try:
            target(data)
        except BaseException:
            print(f"fuzz_server: failing input: {data!r}", file=sys.stderr)
            raise


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60, help="how long to run")
    parser.add_argument("--check-every", type=int, default=2000,
                        help="inputs per harness before fstest and a fresh file")
    parser.add_argument("--corpus", help="atheris: a corpus directory to keep")
    parser.add_argument("--seed", type=int, default=None, help="mutation loop: random seed")
    options, libfuzzer_args = parser.parse_known_args()
    # Refused calls log warnings by design; only what is critical is news.
    logging.basicConfig(level=logging.CRITICAL)
    fuzzing = import_harness()
    target = Target(fuzzing, options.check_every)
    seeds = [(b"\0" if encoding == "M" else b"\1") + stream
             for encoding, stream in fuzzing.seed_streams()]

    def finish():
        target.retire()   # the last fstest and reread
        target.report()
        shutil.rmtree(target.root, ignore_errors=True)

    if atheris is None:
        try:
            mutation_loop(target, seeds, options.seconds, options.seed)
        finally:
            finish()
        return
    corpus = options.corpus or tempfile.mkdtemp(prefix="zeo-fuzz-corpus-")
    os.makedirs(corpus, exist_ok=True)
    for number, seed in enumerate(seeds):
        with open(os.path.join(corpus, f"seed-{number}"), "wb") as f:
            f.write(seed)
    deadline = time.monotonic() + options.seconds

    def one_input(data):
        target(data)
        if time.monotonic() > deadline:
            # libFuzzer leaves without running atexit handlers: stop here.
            finish()
            sys.stdout.flush()
            os._exit(0)

    atheris.Setup([sys.argv[0], *libfuzzer_args, corpus], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
