"""The Kubernetes calls the stage runner makes, through the official client (``kubernetes``).

Credentials are found the way kubectl finds them: the pod's service account inside a cluster (its
token re-read as it rotates), else the current context of ``$KUBECONFIG`` / ``~/.kube/config`` with
everything kubectl supports there (client certificates, tokens, and ``exec`` plugins such as
``aws eks get-token``, ``gke-gcloud-auth-plugin`` or ``kubelogin``, whose short-lived tokens are
fetched again before they expire). A 401 re-runs the authentication once, so a token that expired
anyway is replaced rather than ending a multi-day pipeline.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"
MERGE_PATCH = "application/merge-patch+json"
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class KubeError(RuntimeError):
    """The API server said no (or could not be reached); the message says what to do. ``transient``
    errors (no connection, 429, 5xx) are worth another try."""

    def __init__(self, message: str, transient: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.transient, self.status = transient, status


@dataclass
class Connection:
    """How to build an API client (again, after a 401), the default namespace, and where it came from."""

    make_client: Callable[[], Any]
    namespace: str | None
    where: str


def connect(server: str | None = None, token: str | None = None, kubeconfig: str | None = None) -> Connection:
    """``--server``/``--token`` if given, else the pod's service account, else the kubeconfig's
    current context. KubeError (one line) when none of them works."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    def configured(setup: Callable[[Any], None]) -> Callable[[], Any]:
        def make() -> Any:
            cfg = client.Configuration()
            try:
                setup(cfg)
            except (ConfigException, OSError, ValueError, KeyError, TypeError) as e:
                raise KubeError(f"cannot load Kubernetes credentials: {' '.join(str(e).split())}") from None
            if token:
                cfg.api_key = {"BearerToken": f"Bearer {token}"}
                cfg.refresh_api_key_hook = None
            return client.ApiClient(cfg)

        return make

    if server:

        def plain(cfg: Any) -> None:
            cfg.host = server.rstrip("/")

        return Connection(configured(plain), None, f"--server {server}")
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        make = configured(lambda cfg: config.load_incluster_config(client_configuration=cfg, try_refresh_token=True))
        return Connection(make, _pod_namespace(), "the pod's service account")
    path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or os.path.expanduser("~/.kube/config")
    if not os.path.exists(path):
        raise KubeError(f"no kubeconfig at {path}: set KUBECONFIG, pass --kubeconfig, or --server and --token")
    try:
        _, active = config.list_kube_config_contexts(config_file=path)
    except (ConfigException, OSError, ValueError) as e:
        raise KubeError(f"{path}: not a usable kubeconfig: {' '.join(str(e).split())}") from None
    make = configured(lambda cfg: config.load_kube_config(config_file=path, client_configuration=cfg))
    namespace = (active.get("context") or {}).get("namespace")
    return Connection(make, namespace, f"{path} (context {active.get('name')!r})")


def _pod_namespace() -> str | None:
    """The pod's namespace, from its service account mount."""
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE) as f:
            return f.read().strip() or None
    except OSError:
        return None


class Kube:
    """The runner's calls: RayJobs (get, merge-patch), pods (list), one ConfigMap (get, create, patch).
    Objects come back as plain dicts in the API's own spelling (``metadata.labels``, ``status.jobStatus``)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._client = conn.make_client()

    def get_rayjob(self, namespace: str, name: str) -> dict | None:
        """The RayJob, or None when there is none by that name."""
        return self._call(
            f"GET RayJob {namespace}/{name}",
            lambda c: c.CustomObjectsApi(self._client).get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            ),
            missing_ok=True,
        )

    def patch_rayjob(self, namespace: str, name: str, body: dict) -> dict:
        """A JSON merge patch (RFC 7386): only the fields in ``body`` change."""
        return self._call(
            f"PATCH RayJob {namespace}/{name}",
            lambda c: c.CustomObjectsApi(self._client).patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, body, _content_type=MERGE_PATCH
            ),
        )

    def list_pods(self, namespace: str, selector: str) -> list[dict]:
        out = self._call(
            f"list pods {selector} in {namespace}",
            lambda c: c.CoreV1Api(self._client).list_namespaced_pod(namespace, label_selector=selector),
        )
        return list((out or {}).get("items") or [])

    def get_configmap(self, namespace: str, name: str) -> dict | None:
        return self._call(
            f"GET ConfigMap {namespace}/{name}",
            lambda c: c.CoreV1Api(self._client).read_namespaced_config_map(name, namespace),
            missing_ok=True,
        )

    def put_configmap_data(self, namespace: str, name: str, data: dict[str, str], labels: dict[str, str]) -> None:
        """Merge ``data`` into the ConfigMap, creating it first when it does not exist."""
        from kubernetes import client

        def create(c: Any) -> Any:
            meta = client.V1ObjectMeta(name=name, labels=labels)
            return c.CoreV1Api(self._client).create_namespaced_config_map(
                namespace, client.V1ConfigMap(metadata=meta, data=data)
            )

        if self.get_configmap(namespace, name) is None:
            try:
                self._call(f"create ConfigMap {namespace}/{name}", create)
                return
            except KubeError as e:
                if e.status != 409:  # 409: someone created it meanwhile, so patch it below
                    raise
        self._call(
            f"PATCH ConfigMap {namespace}/{name}",
            lambda c: c.CoreV1Api(self._client).patch_namespaced_config_map(
                name, namespace, {"data": data}, _content_type=MERGE_PATCH
            ),
        )

    def _call(self, what: str, call: Callable[[Any], Any], missing_ok: bool = False) -> Any:
        """One request; a 401 rebuilds the client (re-running the credential plugin) and tries once more."""
        import urllib3
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        for attempt in (0, 1):
            try:
                return self._plain(call(client))
            except ApiException as e:
                if e.status == 404 and missing_ok:
                    return None
                if e.status == 401 and attempt == 0:
                    self._client = self.conn.make_client()
                    continue
                raise _api_error(what, e, self.conn.where) from None
            except (urllib3.exceptions.HTTPError, OSError) as e:  # no connection, TLS, a cut response
                host = getattr(self._client.configuration, "host", "?")
                raise KubeError(f"{what}: cannot reach the API server {host}: {_one_line(e)}", transient=True) from None
        raise AssertionError("unreachable")

    def _plain(self, obj: Any) -> Any:
        """Typed models (V1Pod...) as dicts in the API's spelling; custom objects are dicts already."""
        return self._client.sanitize_for_serialization(obj) if not isinstance(obj, dict | list) else obj


def _api_error(what: str, e: Any, where: str) -> KubeError:
    import json

    try:
        why = json.loads(e.body or "{}").get("message") or e.reason
    except (ValueError, AttributeError):
        why = e.reason or str(e.body)
    status = e.status or 0
    if status == 401:
        why = f"{why}: the credentials from {where} were refused (expired token? run `kubectl auth whoami`)"
    elif status == 403:
        why = f"{why}: give the runner's account this permission (manifests/components/pipeline-runner/rbac.yaml)"
    transient = status == 429 or status >= 500
    return KubeError(f"{what}: HTTP {status}: {_one_line(why)}", transient=transient, status=status)


def _one_line(x: object) -> str:
    return " ".join(str(x).split())
