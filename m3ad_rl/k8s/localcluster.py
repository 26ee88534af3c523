"""A local Ray cluster laid out like the KubeRay one, for tests and for trying RayJobs without Kubernetes.

    m3ad-rl cluster up --dir runs/cluster [--workers 2] [--cpus 4] [--config-dir manifests/overlays/dev/config]
    m3ad-rl cluster down --dir runs/cluster

- a Ray head with ``num-cpus: 0``: the driver (a job's entrypoint) runs there, nothing else;
- worker nodes, each ``ray start --address …`` in its own mount namespace (``unshare --mount``,
  root only) with a private ``/tmp``, ``/dev/shm`` and home, so no two "pods" share a disk;
- an S3 API on 127.0.0.1 (the ``moto`` server) that every node reaches through ``AWS_ENDPOINT_URL``;
- the run configs bind-mounted at ``/etc/m3ad`` in every node, as the ConfigMap is in every pod.

Jobs go in through the Ray Jobs API at ``dashboard_url``, as a RayJob's submitter sends them.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CONFIG_MOUNT = "/etc/m3ad"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    argv: list[str]
    log: Path


@dataclass
class LocalCluster:
    """Start with ``up()``, stop with ``down()`` (only the processes it started, by id)."""

    root: Path
    workers: int = 2
    cpus: int = 4
    object_store_mb: int = 300
    config_dir: Path | None = None
    bucket: str | None = "m3ad-dev"
    env: dict[str, str] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    moto: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root).absolute()
        self.gcs_port, self.dashboard_port, self.s3_port = free_port(), free_port(), free_port()

    # ---- addresses -----------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def client_env(self) -> dict[str, str]:
        """What a client (a test, `m3ad-rl sweep report`) needs to read the cluster's storage."""
        return {"AWS_ENDPOINT_URL": self.s3_endpoint, **S3_KEYS}

    # ---- lifecycle -----------------------------------------------------------------------------
    def up(self, timeout: float = 120) -> LocalCluster:
        if os.geteuid() != 0 or not shutil.which("unshare"):
            raise RuntimeError("the local cluster needs root and unshare(1) for its private mount namespaces")
        self.root.mkdir(parents=True, exist_ok=True)
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so `finally`/fixtures stop the cluster
        try:
            self._start_s3()
            self._start_node("head", head=True)
            for i in range(self.workers):
                self._start_node(f"worker-{i}")
            self.wait_nodes(1 + self.workers, timeout)
        except BaseException:
            self.down()  # nothing half-started is left behind
            raise
        (self.root / "cluster.json").write_text(json.dumps(self.describe(), indent=2))
        return self

    def describe(self) -> dict:
        return {
            "address": self.address, "dashboard": self.dashboard_url, "s3_endpoint": self.s3_endpoint,
            "pids": {n.name: n.proc.pid for n in self.nodes} | ({"s3": self.moto.pid} if self.moto else {}),
        }  # fmt: skip

    def down(self) -> None:
        for n in reversed(self.nodes):
            _stop(n.proc)
        self.nodes.clear()
        if self.moto is not None:
            _stop(self.moto)
            self.moto = None

    def __enter__(self) -> LocalCluster:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    # ---- pieces --------------------------------------------------------------------------------
    def _start_s3(self) -> None:
        log = open(self.root / "s3.log", "wb")  # noqa: SIM115 (lives as long as the server)
        self.moto = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.s3_port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.s3_port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"the S3 server did not start: see {self.root / 's3.log'}")
        if self.bucket:
            self.make_bucket(self.bucket)

    def make_bucket(self, name: str) -> None:
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=self.s3_endpoint, key=S3_KEYS["AWS_ACCESS_KEY_ID"],
                               secret=S3_KEYS["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
        if not fs.exists(name):
            fs.mkdir(name)

    def node_env(self) -> dict[str, str]:
        keep = ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env.update(self.client_env())
        env.update({
            "HOME": "/tmp/home",  # private to the node, like a pod's filesystem
            # DeepSpeed's compiled CPU ops are part of the image in a real pod: share the host's build.
            "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", f"{Path.home()}/.cache/torch_extensions"),
            "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
        })  # fmt: skip
        env.update(self.env)
        return env

    def _ray_argv(self, head: bool) -> list[str]:
        lo = 20000 + 1000 * len(self.nodes)  # each node its own worker-port range
        common = [
            "--node-ip-address", "127.0.0.1", "--object-store-memory", str(self.object_store_mb * 2**20),
            "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port()),
            "--min-worker-port", str(lo), "--max-worker-port", str(lo + 999), "--disable-usage-stats", "--block",
        ]  # fmt: skip
        if head:
            return ["ray", "start", "--head", "--num-cpus", "0", "--port", str(self.gcs_port),
                    "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                    "--ray-client-server-port", str(free_port()), *common]  # fmt: skip
        return ["ray", "start", "--address", self.address, "--num-cpus", str(self.cpus), *common]

    def _start_node(self, name: str, head: bool = False, argv: list[str] | None = None) -> Node:
        argv = argv or self._ray_argv(head)
        mounts = []
        if self.config_dir is not None:  # first: the source may itself be under /tmp
            Path(CONFIG_MOUNT).mkdir(parents=True, exist_ok=True)
            mounts.append(f"mount --bind -o ro {shlex.quote(str(Path(self.config_dir).absolute()))} {CONFIG_MOUNT}")
        mounts += ["mount -t tmpfs -o size=8g tmpfs /tmp", "mount -t tmpfs -o size=2g tmpfs /dev/shm"]
        mounts.append("mkdir -p /tmp/home")
        script = " && ".join([*mounts, f"exec {shlex.join(argv)}"])
        log = self.root / f"{name}.log"
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script],
            stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=self.node_env(), start_new_session=True,  # noqa: SIM115
        )  # fmt: skip
        node = Node(name, proc, argv, log)
        self.nodes.append(node)
        if head:
            self._wait_dashboard()
        return node

    def _wait_dashboard(self, timeout: float = 90) -> None:
        import urllib.request

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.nodes[0].proc.poll() is not None:
                raise RuntimeError(f"the Ray head exited: see {self.nodes[0].log}")
            try:
                urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=2).read()
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"the Ray head's dashboard did not answer in {timeout:.0f} s: see {self.nodes[0].log}")

    def alive_nodes(self) -> list[dict]:
        import urllib.request

        with urllib.request.urlopen(f"{self.dashboard_url}/api/v0/nodes?limit=100", timeout=10) as r:
            rows = json.load(r)["data"]["result"]["result"]
        return [n for n in rows if n.get("state") == "ALIVE"]

    def wait_nodes(self, n: int, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if len(self.alive_nodes()) >= n:
                    return
            except OSError:
                pass
            time.sleep(1)
        raise RuntimeError(f"fewer than {n} Ray nodes alive after {timeout:.0f} s: see the logs in {self.root}")

    # ---- faults --------------------------------------------------------------------------------
    def kill_raylet(self, worker: int) -> int:
        """SIGKILL the raylet of worker node ``worker`` (as if its pod died); returns its pid."""
        import psutil

        node = self.nodes[1 + worker]
        for p in psutil.Process(node.proc.pid).children(recursive=True):
            if "raylet" in p.name():
                p.kill()
                _stop(node.proc)
                return p.pid
        raise RuntimeError(f"no raylet under {node.name}")

    def restart_worker(self, worker: int) -> None:
        """Start worker node ``worker`` again (a fresh pod: empty /tmp and home)."""
        old = self.nodes[1 + worker]
        _stop(old.proc)
        self.nodes[1 + worker] = self._start_node(old.name, argv=old.argv)
        self.nodes.pop()  # _start_node appended it too


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _stop(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM the process group we started, then SIGKILL what is left."""
    if proc.poll() is not None:
        return
    with _ignore():
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with _ignore():
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


class _ignore:
    def __enter__(self):
        return self

    def __exit__(self, typ, *_):
        return typ is not None and issubclass(typ, ProcessLookupError | PermissionError)


def up_cli(root: str, workers: int, cpus: int, config_dir: str | None) -> int:
    """`m3ad-rl cluster up`: start it and leave it running; prints how to use it."""
    c = LocalCluster(Path(root), workers=workers, cpus=cpus, config_dir=Path(config_dir) if config_dir else None)
    c.up()
    print(json.dumps(c.describe(), indent=2))
    print(f"export RAY_ADDRESS={c.dashboard_url} AWS_ENDPOINT_URL={c.s3_endpoint} "
          + " ".join(f"{k}={v}" for k, v in S3_KEYS.items()))  # fmt: skip
    print(f"ray job submit --address {c.dashboard_url} -- m3ad-rl ...;  m3ad-rl cluster down --dir {root}")
    return 0


def down_cli(root: str, grace: float = 45) -> int:
    """`m3ad-rl cluster down`: stop what `cluster up` started (the process groups it recorded).

    SIGTERM first (a Ray node drains for up to 30 s), SIGKILL for what is left after ``grace``."""
    info = json.loads((Path(root) / "cluster.json").read_text())
    groups = {name: pid for name, pid in info["pids"].items() if _group_alive(pid)}
    for pid in groups.values():
        with _ignore():
            os.killpg(pid, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and any(_group_alive(p) for p in groups.values()):
        time.sleep(0.5)
    for name, pid in groups.items():
        if _group_alive(pid):
            with _ignore():
                os.killpg(pid, signal.SIGKILL)
        print(f"stopped {name} (process group {pid})")
    return 0


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except OSError:
        return False
