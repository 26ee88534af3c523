"""A local Ray cluster laid out like the KubeRay one, for tests and for trying RayJobs without Kubernetes.

    m3ad-rl cluster up --dir runs/cluster [--workers 2] [--cpus 4] [--config-dir manifests/overlays/dev/config]
    m3ad-rl cluster down --dir runs/cluster

- a Ray head with ``num-cpus: 0``: the driver (a job's entrypoint) runs there, nothing else;
- worker nodes, each ``ray start --address …`` in its own mount namespace (``unshare --mount``,
  root only) with a private ``/tmp`` (its working directory), ``/dev/shm``, home and torch-extensions
  folder, so no two "pods" share a disk;
- each node on its own loopback address (head 127.0.0.2, workers .3, .4, …: Ray's
  ``--node-ip-address``), so an address handed from one node to another must be the right one;
- each node under its own memory limit (a memory cgroup, bound over ``/sys/fs/cgroup/memory`` inside
  the node as a container sees its own, so Ray sizes itself from it), where cgroups can be written;
- the nodes run the ``ray`` of the Python that started the cluster; that Python's environment and the
  m3ad-rl checkout, when they live under ``/tmp``, are bound back read-only into each node (they are
  the image's content, not the pod's disk);
- an S3 API on 127.0.0.1 (the ``moto`` server) that every node reaches through ``AWS_ENDPOINT_URL``;
- the run configs bind-mounted at ``/etc/m3ad`` in every node, as the ConfigMap is in every pod.

Jobs go in through the Ray Jobs API at ``dashboard_url``, as a RayJob's submitter sends them.
"""

from __future__ import annotations

import contextlib
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
NODE_NET = "127.0.0"  # node i (0 = head) listens on 127.0.0.{2 + i}; the S3 server on 127.0.0.1
STAGING = Path("/run/m3ad-rl")  # outside /tmp: where a node keeps what it binds back under its /tmp
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
    memory_mb: int = 8192  # each worker node's limit, as a pod's
    head_memory_mb: int = 4096
    autoscaling: Path | None = None  # a RayCluster manifest: its worker groups as Ray autoscaler node types
    node_cpus: float | None = None  # with autoscaling: CPUs of each autoscaled node instead of the manifest's
    idle_timeout_s: float | None = None  # with autoscaling: instead of autoscalerOptions.idleTimeoutSeconds
    nodes: list[Node] = field(default_factory=list)
    moto: subprocess.Popen | None = None
    cgroups: dict[str, Path] = field(default_factory=dict)
    peak_memory_mb: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root).absolute()
        self.gcs_port, self.dashboard_port, self.s3_port = free_port(), free_port(), free_port()
        # the Ray of this Python (activated or not, its scripts on PATH or not), not whatever PATH finds
        self.ray = [sys.executable, "-m", "ray.scripts.scripts"]
        self.staging = STAGING / f"{os.getpid()}-{self.gcs_port}"

    # ---- addresses -----------------------------------------------------------------------------
    @staticmethod
    def node_ip(index: int) -> str:
        """Node ``index``'s address (0 is the head)."""
        return f"{NODE_NET}.{2 + index}"

    @property
    def head_ip(self) -> str:
        return self.node_ip(0)

    @property
    def address(self) -> str:
        return f"{self.head_ip}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.head_ip}:{self.dashboard_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def client_env(self) -> dict[str, str]:
        """What a client (a test, `m3ad-rl sweep report`) needs to read the cluster's storage."""
        return {"AWS_ENDPOINT_URL": self.s3_endpoint, **S3_KEYS}

    # ---- lifecycle -----------------------------------------------------------------------------
    def up(self, timeout: float = 120) -> LocalCluster:
        self.check()
        self.root.mkdir(parents=True, exist_ok=True)
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so `finally`/fixtures stop the cluster
        try:
            self._start_s3()
            self._start_node("head", head=True)
            if self.workers:  # as KubeRay's wait-gcs-ready init container: a worker whose `ray start` finds no GCS
                self.wait_nodes(1, timeout)  # gives up (seen once in the suite under load)
            for i in range(self.workers):
                self._start_node(f"worker-{i}")
            self.wait_nodes(1 + self.workers, timeout)
        except BaseException:
            self.down()  # nothing half-started is left behind
            raise
        (self.root / "cluster.json").write_text(json.dumps(self.describe(), indent=2))
        return self

    def check(self) -> None:
        """What the nodes need and cannot see otherwise: RuntimeError with one line, before anything starts."""
        if os.geteuid() != 0 or not shutil.which("unshare"):
            raise RuntimeError("the local cluster needs root and unshare(1) for its private mount namespaces")
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise RuntimeError(f"ray is not installed for {sys.executable}: pip install 'ray[default]' there")
        if self.config_dir is not None and not Path(self.config_dir).is_dir():
            raise RuntimeError(f"--config-dir {self.config_dir} is not a folder")
        if self.autoscaling is not None:
            if not Path(self.autoscaling).is_file():
                raise RuntimeError(f"--autoscaling {self.autoscaling}: no such file (a RayCluster manifest)")
            self.pool_config()  # a manifest that does not autoscale is one line here, not a dead monitor later

    def describe(self) -> dict:
        return {
            "address": self.address, "dashboard": self.dashboard_url, "s3_endpoint": self.s3_endpoint,
            "nodes": {n.name: self.node_ip(i) for i, n in enumerate(self.nodes)},
            "autoscaling": self.pool_config()["available_node_types"] if self.autoscaling else None,
            "memory_limit_mb": {n: self._limit_mb(n) for n in self.cgroups} or None,
            "bound_read_only": [str(p) for p in self.image_paths()],
            "pids": {n.name: n.proc.pid for n in self.nodes} | ({"s3": self.moto.pid} if self.moto else {}),
            "cgroups": {n: str(p) for n, p in self.cgroups.items()},
        }  # fmt: skip

    def down(self) -> None:
        for n in reversed(self.nodes):
            namespace = _mount_namespace(n.proc.pid)
            _stop(n.proc)
            _stop_namespace(namespace)  # what the node started outside its process group (autoscaled nodes)
        self.nodes.clear()
        if self.moto is not None:
            _stop(self.moto)
            self.moto = None
        for name, cg in list(self.cgroups.items()):
            self.peak_memory_mb[name] = _peak_mb(cg)
            _remove_cgroup(cg)
        if self.cgroups and self.root.is_dir():  # what each "pod" needed: sizes for the real limits
            (self.root / "peak-memory-mb.json").write_text(json.dumps(self.peak_memory_mb, indent=2))
        self.cgroups.clear()
        shutil.rmtree(self.staging, ignore_errors=True)

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
            "TORCH_EXTENSIONS_DIR": "/tmp/torch_extensions",  # private too; seeded from the host's build
            "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
        })  # fmt: skip
        # this Python's scripts first (m3ad-rl in a job's entrypoint), activated or not
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "/usr/bin:/bin")])
        env.update(self.env)
        return env

    def image_paths(self) -> list[Path]:
        """This Python's environment, the m3ad-rl checkout and any import path that lives under /tmp:
        what a pod has in its image, so each node gets them back, read-only, under its private /tmp."""
        import m3ad_rl

        found = [Path(sys.prefix), Path(m3ad_rl.__file__).resolve().parents[1]]
        found += [Path(p) for p in sys.path if p and Path(p).is_dir()]
        found.append(Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"))
        tmp = Path("/tmp")  # /tmp itself stays private (a script run from /tmp puts it on sys.path)
        under_tmp = sorted({p.resolve() for p in found if p.exists() and p.resolve().is_relative_to(tmp)} - {tmp})
        return [p for p in under_tmp if not any(p != q and p.is_relative_to(q) for q in under_tmp)]

    def _ray_argv(self, head: bool) -> list[str]:
        index = len(self.nodes)
        lo = 20000 + 1000 * index  # each node its own worker-port range
        common = [
            "--node-ip-address", self.node_ip(index), "--object-store-memory", str(self.object_store_mb * 2**20),
            "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port()),
            "--min-worker-port", str(lo), "--max-worker-port", str(lo + 999), "--disable-usage-stats", "--block",
        ]  # fmt: skip
        if head and self.autoscaling:
            config = self.staging / "autoscaling.json"  # outside /tmp: the head's monitor reads it
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(json.dumps(self.pool_config()))
            common += ["--autoscaling-config", str(config)]
        if head:
            return [*self.ray, "start", "--head", "--num-cpus", "0", "--port", str(self.gcs_port),
                    "--dashboard-host", self.head_ip, "--dashboard-port", str(self.dashboard_port),
                    "--ray-client-server-port", str(free_port()), *common]  # fmt: skip
        return [*self.ray, "start", "--address", self.address, "--num-cpus", str(self.cpus), *common]

    def pool_config(self) -> dict:
        from m3ad_rl.k8s.pool import autoscaling_config

        return autoscaling_config(self.autoscaling, self.address, self.node_cpus, self.idle_timeout_s)

    def _node_script(self, name: str, argv: list[str], head: bool) -> str:
        """The shell that makes a pod of this node's mount namespace, then becomes its raylet."""
        q = shlex.quote
        steps = []
        if self.config_dir is not None:  # first: the source may itself be under /tmp
            Path(CONFIG_MOUNT).mkdir(parents=True, exist_ok=True)
            steps.append(f"mount --bind -o ro {q(str(Path(self.config_dir).absolute()))} {CONFIG_MOUNT}")
        keep = self.image_paths()
        for i, path in enumerate(keep):  # set aside before the private /tmp hides them
            (self.staging / name / str(i)).mkdir(parents=True, exist_ok=True)
            steps.append(f"mount --bind {q(str(path))} {q(str(self.staging / name / str(i)))}")
        steps += ["mount -t tmpfs -o size=8g tmpfs /tmp", "mount -t tmpfs -o size=2g tmpfs /dev/shm"]
        for i, path in enumerate(keep):
            steps.append(f"mkdir -p {q(str(path))}")
            steps.append(f"mount --bind -o ro {q(str(self.staging / name / str(i)))} {q(str(path))}")
        steps.append("mkdir -p /tmp/home /tmp/torch_extensions")
        prebuilt = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
        if prebuilt.is_dir():  # DeepSpeed's compiled CPU ops are in a real pod's image: a private copy
            steps.append(f"cp -a {q(str(prebuilt))}/. /tmp/torch_extensions/")
        cgroup = self._memory_cgroup(name, self.head_memory_mb if head else self.memory_mb)
        if cgroup is not None:  # join it, and see it where a container sees its own
            steps.append(f"echo $$ > {q(str(cgroup / 'cgroup.procs'))}")
            steps.append(f"mount --bind {q(str(cgroup))} {q(str(_memory_root(cgroup)))}")
        steps.append("cd /tmp")
        return " && ".join([*steps, f"exec {shlex.join(argv)}"])

    def _memory_cgroup(self, name: str, limit_mb: int) -> Path | None:
        """A memory cgroup for the node under this process's own, with the limit; None where it cannot be made."""
        cg = _new_memory_cgroup(f"m3ad-{self.staging.name}-{name}", limit_mb)
        if cg is not None:
            self.cgroups[name] = cg
        return cg

    def _limit_mb(self, name: str) -> float | None:
        cg = self.cgroups.get(name)
        return None if cg is None else _read_limit_mb(cg)

    def _start_node(self, name: str, head: bool = False, argv: list[str] | None = None) -> Node:
        argv = argv or self._ray_argv(head)
        script = self._node_script(name, argv, head)
        log = self.root / f"{name}.log"
        env = self.node_env()
        if head and self.autoscaling:
            from m3ad_rl.k8s.pool import head_env

            env.update(head_env())
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script],
            stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True,  # noqa: SIM115
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


def _mount_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _stop_namespace(namespace: str | None) -> None:
    """SIGKILL what is left in a node's private mount namespace (never the caller's own)."""
    import psutil

    if namespace is None or namespace == _mount_namespace(os.getpid()):
        return
    for p in psutil.process_iter():
        if _mount_namespace(p.pid) == namespace:
            with contextlib.suppress(psutil.Error, OSError):
                p.kill()


def _memory_root(cgroup: Path) -> Path:
    """Where the memory hierarchy that holds ``cgroup`` is mounted (v1: .../memory; v2: /sys/fs/cgroup)."""
    v1 = Path("/sys/fs/cgroup/memory")
    return v1 if cgroup.is_relative_to(v1) else Path("/sys/fs/cgroup")


def _new_memory_cgroup(name: str, limit_mb: int) -> Path | None:
    """A child of this process's memory cgroup (v1 ``memory.limit_in_bytes``, else v2 ``memory.max``)."""
    limit = str(limit_mb * 2**20)
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(",") and Path("/sys/fs/cgroup/memory").is_dir():
            where, knob = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / name, "memory.limit_in_bytes"
            break
        if controllers == "" and "memory" in _read(Path("/sys/fs/cgroup/cgroup.controllers")).split():
            where, knob = Path("/sys/fs/cgroup") / path.lstrip("/") / name, "memory.max"
            break
    else:
        return None
    try:
        where.mkdir(exist_ok=True)
        (where / knob).write_text(limit)
        return where
    except OSError:
        _remove_cgroup(where)
        return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _read_limit_mb(cg: Path) -> float | None:
    text = _read(cg / "memory.limit_in_bytes").strip() or _read(cg / "memory.max").strip()
    return int(text) / 2**20 if text.isdigit() else None


def _peak_mb(cg: Path) -> float:
    text = _read(cg / "memory.max_usage_in_bytes").strip() or _read(cg / "memory.peak").strip()
    return round(int(text) / 2**20, 1) if text.isdigit() else float("nan")


def _remove_cgroup(cg: Path, timeout: float = 10) -> None:
    """rmdir once its processes are gone (a stopped node's last ones may take a moment)."""
    deadline = time.time() + timeout
    while cg.exists():
        try:
            cg.rmdir()
            return
        except OSError:
            if time.time() > deadline:
                return
            time.sleep(0.2)


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


def up_cli(
    root: str,
    workers: int,
    cpus: int,
    config_dir: str | None,
    memory_mb: int = 8192,
    head_memory_mb: int = 4096,
    autoscaling: str | None = None,
    node_cpus: float | None = None,
    idle_timeout_s: float | None = None,
) -> int:
    """`m3ad-rl cluster up`: start it and leave it running; prints how to use it."""
    c = LocalCluster(
        Path(root), workers=workers, cpus=cpus, config_dir=Path(config_dir) if config_dir else None,
        memory_mb=memory_mb, head_memory_mb=head_memory_mb, autoscaling=Path(autoscaling) if autoscaling else None,
        node_cpus=node_cpus, idle_timeout_s=idle_timeout_s,
    )  # fmt: skip
    try:
        c.up()
    except RuntimeError as e:  # an environment the nodes cannot use, or a node that did not start
        print(f"m3ad-rl cluster up: {e}", file=sys.stderr)
        return 2
    if not c.cgroups:  # say it: a pod's memory limit is part of what this cluster stands in for
        print("m3ad-rl cluster up: memory cgroups cannot be made here (not root, or cgroupfs read-only): "
              "the nodes run without a memory limit", file=sys.stderr)  # fmt: skip
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
    for cg in (info.get("cgroups") or {}).values():
        _remove_cgroup(Path(cg))
    return 0


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except OSError:
        return False
