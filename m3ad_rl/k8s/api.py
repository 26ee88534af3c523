"""Just enough of the Kubernetes REST API for RayJobs: GET and merge-PATCH of
``/apis/ray.io/v1/namespaces/{ns}/rayjobs/{name}`` over HTTPS with httpx, no client library.

Credentials come from the pod's service account when running in a cluster, else from the current
context of ``$KUBECONFIG`` / ``~/.kube/config`` (a token or a client certificate; exec plugins are
not run: pass ``--token`` for those clusters).
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
RAYJOB_PATH = "/apis/ray.io/v1/namespaces/{ns}/rayjobs/{name}"
MERGE_PATCH = "application/merge-patch+json"


class KubeError(RuntimeError):
    """The API server said no (or could not be reached); the message says what to do. ``transient``
    errors (no connection, 429, 5xx) are worth another try."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass
class Connection:
    """Where the API server is and how to authenticate to it."""

    server: str
    token: Callable[[], str | None] = lambda: None  # read per request: mounted tokens rotate
    ca_file: str | None = None
    ca_data: str | None = None  # PEM
    cert: tuple[str, str] | None = None  # client certificate and key files
    insecure: bool = False
    namespace: str | None = None

    def ssl_context(self) -> ssl.SSLContext | bool:
        """What httpx's ``verify`` gets: a context with the cluster's CA and client certificate."""
        if self.insecure:
            return False
        ctx = ssl.create_default_context(cafile=self.ca_file, cadata=self.ca_data)
        if self.cert:
            ctx.load_cert_chain(*self.cert)
        return ctx


def in_cluster() -> Connection | None:
    """The pod's service account, when running inside a cluster."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    token = SERVICE_ACCOUNT / "token"
    if not host or not token.exists():
        return None
    namespace = (
        (SERVICE_ACCOUNT / "namespace").read_text().strip() if (SERVICE_ACCOUNT / "namespace").exists() else None
    )
    host = f"[{host}]" if ":" in host else host
    return Connection(
        f"https://{host}:{port}",
        lambda: token.read_text().strip(),
        str(SERVICE_ACCOUNT / "ca.crt"),
        namespace=namespace,
    )


def from_kubeconfig(path: str | Path | None = None) -> Connection:
    """The current context of a kubeconfig: its server, CA, token or client certificate, namespace."""
    path = Path(path or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or Path.home() / ".kube" / "config")
    if not path.exists():
        raise KubeError(f"no kubeconfig at {path}: pass --server and --token, or set KUBECONFIG")
    cfg = yaml.safe_load(path.read_text()) or {}
    ctx = _named(cfg, "contexts", cfg.get("current-context"), path)
    cluster = _named(cfg, "clusters", ctx.get("cluster"), path)
    user = _named(cfg, "users", ctx.get("user"), path) if ctx.get("user") else {}
    if "exec" in user or "auth-provider" in user:
        why = f"kubeconfig user {ctx.get('user')!r} gets its token from a plugin, which this client does not run"
        raise KubeError(f'{why}: pass --token (e.g. --token "$(kubectl create token NAME)")')
    base = path.parent
    token = user.get("token") or (_file(base, user["tokenFile"]).read_text().strip() if user.get("tokenFile") else None)
    cert = None
    if user.get("client-certificate") or user.get("client-certificate-data"):
        cert = (_pem(base, user, "client-certificate"), _pem(base, user, "client-key"))
    return Connection(
        server=cluster["server"].rstrip("/"),
        token=lambda: token,
        ca_file=str(_file(base, cluster["certificate-authority"])) if cluster.get("certificate-authority") else None,
        ca_data=_b64(cluster["certificate-authority-data"]) if cluster.get("certificate-authority-data") else None,
        cert=cert,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        namespace=ctx.get("namespace"),
    )


def _named(cfg: dict, section: str, name: str | None, path: Path) -> dict:
    for item in cfg.get(section) or []:
        if item.get("name") == name:
            return item.get(section.removesuffix("s")) or {}
    raise KubeError(
        f"{path}: no {section.removesuffix('s')} named {name!r} (current-context is {cfg.get('current-context')!r})"
    )


def _file(base: Path, name: str) -> Path:
    return Path(name) if Path(name).is_absolute() else base / name


def _b64(data: str) -> str:
    return base64.b64decode(data).decode()


def _pem(base: Path, user: dict, key: str) -> str:
    """A client certificate or key as a file (ssl loads them from files only)."""
    if user.get(key):
        return str(_file(base, user[key]))
    fd, name = tempfile.mkstemp(prefix="m3ad-kube-", suffix=".pem")  # 0600
    with os.fdopen(fd, "w") as f:
        f.write(_b64(user[f"{key}-data"]))
    return name


class RayJobs:
    """GET and merge-PATCH of RayJobs in one namespace."""

    def __init__(self, conn: Connection, timeout: float = 30.0) -> None:
        import httpx

        def bearer(request: httpx.Request) -> None:
            if token := conn.token():
                request.headers["Authorization"] = f"Bearer {token}"

        verify = conn.ssl_context() if conn.server.startswith("https") else False
        self._http = httpx.Client(
            base_url=conn.server, verify=verify, timeout=timeout, event_hooks={"request": [bearer]}
        )

    def get(self, namespace: str, name: str) -> dict:
        return self._call("GET", namespace, name)

    def patch(self, namespace: str, name: str, body: dict) -> dict:
        """A JSON merge patch (RFC 7386): only the fields in ``body`` change."""
        return self._call("PATCH", namespace, name, body)

    def _call(self, method: str, namespace: str, name: str, body: dict | None = None) -> dict:
        import httpx

        url = RAYJOB_PATH.format(ns=namespace, name=name)
        headers = {"Content-Type": MERGE_PATCH} if body is not None else {}
        try:
            res = self._http.request(method, url, json=body, headers=headers)
        except httpx.TransportError as e:
            raise KubeError(f"cannot reach the API server {self._http.base_url}: {e}", transient=True) from e
        if res.status_code == 404:
            raise KubeError(f"RayJob {namespace}/{name} not found: apply the manifests first (kubectl apply -k ...)")
        if res.status_code >= 400:
            try:
                why = res.json().get("message") or res.text
            except ValueError:
                why = res.text
            transient = res.status_code == 429 or res.status_code >= 500
            raise KubeError(f"{method} RayJob {namespace}/{name}: HTTP {res.status_code}: {why.strip()}", transient)
        return res.json()
