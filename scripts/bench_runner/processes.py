"""The processes of a benchmark run: servers (ours or the reference) on a
copy of the template FileStorage, and client processes running
``scripts/bench_client.py``."""
import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from zeo.server.testing import free_port

SCRIPTS = Path(__file__).resolve().parent.parent
REPO = SCRIPTS.parent
BIN = REPO / 'bin'
BENCH_CLIENT = SCRIPTS / 'bench_client.py'
BENCH_FLOOR = SCRIPTS / 'bench_floor.py'


class BenchError(Exception):
    """One run of one workload failed; the others go on."""


def tail(path, lines=15):
    try:
        text = Path(path).read_text(errors='replace')
    except OSError:
        return ''
    return '\n'.join(text.splitlines()[-lines:])


def last_json(text):
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith('{'):
            return json.loads(line)
    raise ValueError('no JSON line')


def listening(port):
    """Is something listening on 127.0.0.1:*port*?  Read from
    /proc/net/tcp, without connecting, so that the connections a server
    has seen are only the workload's (the idle-memory workload counts
    them).  Elsewhere than Linux, connect."""
    try:
        with open('/proc/net/tcp') as f:
            lines = f.readlines()[1:]
    except OSError:
        try:
            socket.create_connection(('127.0.0.1', port), 0.5).close()
            return True
        except OSError:
            return False
    for line in lines:
        fields = line.split()
        address, state = fields[1], fields[3]
        if state == '0A' and int(address.rsplit(':', 1)[1], 16) == port:
            return True                 # 0A: TCP_LISTEN
    return False


def reference_env():
    """The environment for the reference's processes.  ZEO imports
    msgpack only when a connection turns out to be M5, and its msgpack
    extra names a long-gone distribution: if the reference interpreter
    cannot import msgpack (a buildout whose [reference] part lacks it),
    add the msgpack egg."""
    env = dict(os.environ)
    probe = subprocess.run([str(BIN / 'reference-py'), '-c', 'import msgpack'],
                           capture_output=True)
    if probe.returncode == 0:
        return env
    eggs = sorted(REPO.glob('eggs/**/msgpack-*.egg'))
    if not eggs:
        raise SystemExit('the reference interpreter cannot import msgpack '
                         'and no msgpack egg was found under eggs/')
    env['PYTHONPATH'] = os.pathsep.join(
        [str(eggs[-1])] + [p for p in [env.get('PYTHONPATH')] if p])
    return env


class Worker:
    """A client process that talks lines with the runner (READY / go)."""

    def __init__(self, command, env, stderr_path):
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, 'w')
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._stderr, env=env, text=True)
        self.lines = queue.Queue()
        self.output = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError(f'no READY within {timeout} s') from None
            if line is None:
                self.process.wait()
                raise BenchError(f'client exited ({self.process.returncode}) '
                                 f'before it was ready:\n{tail(self.stderr_path)}')
            if line.strip() == 'READY':
                return

    def send(self, line):
        self.process.stdin.write(line + '\n')
        self.process.stdin.flush()

    def result(self, timeout):
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f'client did not finish within {timeout} s') from None
        if self.process.returncode != 0:
            raise BenchError(f'client failed ({self.process.returncode}):\n'
                             f'{tail(self.stderr_path)}')
        self.reader.join(10)           # everything it printed is read
        try:
            return last_json(''.join(self.output))
        except ValueError:
            raise BenchError(f'client printed no result:\n'
                             f'{tail(self.stderr_path)}') from None

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for f in (self.process.stdin, self._stderr):
            with contextlib.suppress(OSError):
                f.close()


def run_together(workers, ready_timeout, result_timeout):
    """Wait until every worker is ready, start them all at once (``go``)
    and return their results; the workers are closed in any case."""
    try:
        for worker in workers:
            worker.wait_ready(ready_timeout)
        for worker in workers:
            worker.send('go')
        return [worker.result(result_timeout) for worker in workers]
    finally:
        for worker in workers:
            worker.close()


class Server:
    """One server process on a copy of the template FileStorage, announcing
    *encoding*: ``'Z5'`` (pickle) or ``'M5'`` (msgpack), said explicitly to
    both kinds of server so that neither's default decides."""

    def __init__(self, bench, kind, directory, encoding='Z5', zeo_keys=None):
        if encoding not in ('Z5', 'M5'):
            raise ValueError(f'encoding must be Z5 or M5, not {encoding!r}')
        self.bench = bench
        self.kind = kind
        self.directory = directory
        self.encoding = encoding
        self.port = free_port()
        self.addr = f'127.0.0.1:{self.port}'
        self.log = directory / 'server.log'
        self.process = None
        #: More ``<zeo>`` keys for our server (then started with -C).
        self.zeo_keys = dict(zeo_keys or {})

    def start(self):
        data = self.directory / 'Data.fs'
        blobs = self.directory / 'blobs'
        template = self.bench.template
        shutil.copyfile(template, data)
        if Path(f'{template}.index').exists():
            shutil.copyfile(f'{template}.index', f'{data}.index')
        if self.kind == 'ours' and self.zeo_keys:
            conf = self.directory / 'zeo.conf'
            keys = ''.join(f'  {key} {value}\n' for key, value in self.zeo_keys.items())
            conf.write_text(
                f"<zeo>\n  address {self.addr}\n"
                f"  msgpack {'true' if self.encoding == 'M5' else 'false'}\n{keys}</zeo>\n"
                f"<filestorage 1>\n  path {data}\n  blob-dir {blobs}\n</filestorage>\n")
            command = [str(BIN / 'runzeo'), '-C', str(conf)]
            env = None
        elif self.kind == 'ours':
            command = [str(BIN / 'runzeo'), '-a', self.addr, '-f', str(data),
                       '--blob-dir', str(blobs),
                       '--msgpack' if self.encoding == 'M5' else '--pickle']
            env = None
        else:
            conf = self.directory / 'zeo.conf'
            conf.write_text(textwrap.dedent(f"""\
                <zeo>
                  address {self.addr}
                  msgpack {'true' if self.encoding == 'M5' else 'false'}
                </zeo>
                <filestorage 1>
                  path {data}
                  blob-dir {blobs}
                </filestorage>
                """))
            command = [str(BIN / 'reference-runzeo'), '-C', str(conf)]
            env = self.bench.ref_env
        return self.launch(command, env)

    def launch(self, command, env=None):
        """Start *command*, the server; return when it listens."""
        with open(self.log, 'w') as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=self.directory)
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise BenchError(f'{self.kind} server exited '
                                 f'({self.process.returncode}):\n{tail(self.log)}')
            if listening(self.port):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError(f'{self.kind} server not listening after '
                                 f'60 s:\n{tail(self.log)}')
            time.sleep(0.05)

    @property
    def pid(self):
        return self.process.pid

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Bench:
    """The state of one benchmark invocation."""

    def __init__(self, sizes, workdir, verbose=True, script=BENCH_CLIENT):
        self.sizes = sizes
        #: What client processes run (bench_client.py, or a script that
        #: adds workloads to it).
        self.script = script
        self.workdir = workdir
        self.verbose = verbose
        self.template = workdir / 'template' / 'Data.fs'
        self.ref_env = reference_env()
        self.runs = 0

    def say(self, message):
        if self.verbose:
            print(message, file=sys.stderr, flush=True)

    def python(self, kind):
        return [str(BIN / ('reference-py' if kind == 'zeo' else 'py'))]

    def env(self, kind):
        return self.ref_env if kind == 'zeo' else None

    def command(self, kind, workload, *args):
        return [*self.python(kind), str(self.script), workload,
                '--impl', kind, '--objects', str(self.sizes['objects']),
                *map(str, args)]

    def make_template(self):
        self.template.parent.mkdir()
        self.client('ours', 'populate', '--path', self.template,
                    directory=self.template.parent)

    @contextlib.contextmanager
    def server(self, kind, encoding='Z5', zeo_keys=None):
        """A server of *kind*; *zeo_keys*: more ``<zeo>`` keys for ours."""
        self.runs += 1
        directory = self.workdir / f'run{self.runs:03d}-{kind}-{encoding}'
        directory.mkdir()
        server = Server(self, kind, directory, encoding, zeo_keys)
        try:
            yield server.start()
        finally:
            server.stop()
            shutil.rmtree(directory, ignore_errors=True)

    def client(self, kind, workload, *args, directory, interpreter=None):
        """Run one client process to the end; its JSON result."""
        command = self.command(kind, workload, *args)
        if interpreter is not None:
            command[:1] = self.python(interpreter)
        stderr_path = directory / f'{workload}-{kind}.err'
        with open(stderr_path, 'w') as stderr:
            try:
                done = subprocess.run(
                    command, stdout=subprocess.PIPE, stderr=stderr, text=True,
                    env=self.env(interpreter or kind),
                    timeout=self.sizes['timeout'])
            except subprocess.TimeoutExpired:
                raise BenchError(f'{workload} timed out') from None
        if done.returncode != 0:
            raise BenchError(f'{workload} client failed ({done.returncode}):\n'
                             f'{tail(stderr_path)}')
        try:
            return last_json(done.stdout)
        except ValueError:
            raise BenchError(f'{workload} client printed no result:\n'
                             f'{tail(stderr_path)}') from None

    def workers(self, kind, workload, count, *args, directory):
        return [Worker(self.command(kind, workload, *args), self.env(kind),
                       directory / f'{workload}-{kind}-{n}.err')
                for n in range(count)]


def raise_nofile_limit(wanted):
    """Servers inherit our RLIMIT_NOFILE: let them hold the idle
    connections."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY:
            wanted = min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
