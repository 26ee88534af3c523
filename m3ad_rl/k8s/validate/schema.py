"""Schemas: the KubeRay CRDs closed and defaulted like the API server, and core objects with
``kubernetes-validate --strict``.

The API server prunes fields a CRD schema does not know, silently (``replicaz: 2`` is accepted and
dropped), so the CRD schemas get ``additionalProperties: false`` wherever they list properties and
do not preserve unknown fields. CEL rules (``x-kubernetes-validations``) are not evaluated; the ones
that matter for a create are restated in ``kuberay.py``.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import yaml

# Core API groups kubernetes-validate knows; other kinds (Kueue, ...) get the name checks only.
CORE_API_VERSIONS = {
    "v1", "apps/v1", "batch/v1", "networking.k8s.io/v1", "rbac.authorization.k8s.io/v1", "policy/v1",
}  # fmt: skip


def dotted(path: Iterable[Any]) -> str:
    """``['spec', 'workerGroupSpecs', 0, 'groupName']`` → ``spec.workerGroupSpecs[0].groupName``."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


@cache
def crd_schemas(directory: str) -> dict[str, dict]:
    """kind → the v1 openAPIV3Schema with unknown fields rejected."""
    out = {}
    for f in sorted(Path(directory).glob("ray.io_*.yaml")):
        crd = yaml.safe_load(f.read_text())
        for v in crd["spec"]["versions"]:
            if v["name"] == "v1":
                out[crd["spec"]["names"]["kind"]] = close_schema(v["schema"]["openAPIV3Schema"])
    return out


def close_schema(schema: Any) -> Any:
    """A copy with ``additionalProperties: false`` where properties are listed and unknown fields
    are not preserved, and ``nullable`` turned into a JSON-schema null type."""
    if isinstance(schema, list):
        return [close_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    s = {k: close_schema(v) if k in ("properties", "items", "additionalProperties", "anyOf", "allOf") else v
         for k, v in schema.items()}  # fmt: skip
    if "properties" in s:
        s["properties"] = {k: close_schema(v) for k, v in schema["properties"].items()}
        if not s.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in s:
            s["additionalProperties"] = False
    if s.get("nullable") and isinstance(s.get("type"), str):
        s["type"] = [s["type"], "null"]
    return s


def apply_defaults(obj: Any, schema: dict) -> Any:
    """What the API server stores: nulls of non-nullable fields pruned, then defaults filled in."""
    if isinstance(obj, dict):
        props = schema.get("properties", {})
        for key in [k for k, v in obj.items() if v is None and not props.get(k, {}).get("nullable")]:
            del obj[key]
        for key, sub in props.items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                apply_defaults(obj[key], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in obj.keys() - props.keys():
                apply_defaults(obj[key], extra)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for item in obj:
            apply_defaults(item, schema["items"])
    return obj


def check_schema(doc: dict, schema: dict) -> list[tuple[str, str]]:
    """(field path, message) for every violation of the closed, defaulted schema."""
    from jsonschema import Draft7Validator

    obj = apply_defaults(copy.deepcopy(doc), schema)
    problems = []
    for err in sorted(Draft7Validator(schema).iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        path = list(err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            known = list(err.schema.get("properties", {}))
            for key in sorted(set(err.instance) - set(known)):
                hint = difflib.get_close_matches(key, known, n=1)
                more = f"; did you mean '{hint[0]}'?" if hint else f"; known fields: {', '.join(known)}"
                problems.append((dotted([*path, key]), f"unknown field '{key}'{more}"))
        elif err.validator == "required":
            field = err.message.split("'")[1] if "'" in err.message else err.message
            problems.append((dotted([*path, field]), f"required field '{field}' is missing"))
        else:
            problems.append((dotted(path), plain_message(err)))
    return problems


def plain_message(err) -> str:
    """jsonschema's message, with the cases it words as raw patterns said the way an engineer would, on
    one line of bounded length (its generic messages repeat the whole offending value)."""
    if err.validator == "pattern" and "numkMGTPE" in str(err.validator_value):  # resource.Quantity
        return f"{_short(err.instance)} is not a Kubernetes quantity: write e.g. 500m or 2 (CPUs), 512Mi or 1Gi (bytes)"
    if err.validator == "pattern":
        return f"{_short(err.instance)} does not have the form this field takes (pattern {err.validator_value})"
    if err.validator == "type":
        want = " or ".join(err.validator_value) if isinstance(err.validator_value, list) else err.validator_value
        a = "an" if want[0] in "aeiou" else "a"
        return f"{_short(err.instance)} is not {a} {want}: write {a} {want} here"
    if err.validator == "enum":
        return f"{_short(err.instance)} is not allowed here: write one of {', '.join(map(str, err.validator_value))}"
    message = " ".join(str(err.message).split())
    return message if len(message) <= 200 else message[:197] + "..."


def _short(value, limit: int = 60) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def yaml_problem(err: Exception, source: str = "") -> str:
    """A PyYAML error in one line: ``source:line:col: problem (context)`` (PyYAML's own spans five)."""
    mark = getattr(err, "problem_mark", None)
    if mark is None:
        where = source
    else:
        line, col = mark.line + 1, mark.column + 1
        where = f"{source}:{line}:{col}" if source else f"line {line}, column {col}"
    problem = " ".join(str(getattr(err, "problem", None) or err).split())
    context = getattr(err, "context", None)
    return f"{where}: not valid YAML: {problem}" + (f" ({' '.join(str(context).split())})" if context else "")


def check_pod_template(template: dict) -> list[tuple[str, str]]:
    """Strict core/v1 validation of one pod template (kubernetes-validate stops at the first error)."""
    wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
    return [(p.removeprefix("template.").removeprefix("template"), m) for p, m in check_core_object(wrapped)]


def check_core_object(doc: dict) -> list[tuple[str, str]]:
    """Strict validation of a core Kubernetes object; nothing for kinds kubernetes-validate lacks."""
    import kubernetes_validate as kv

    if doc.get("apiVersion") not in CORE_API_VERSIONS:
        return []
    try:
        kv.validate(doc, kv.latest_version(), strict=True)
    except kv.SchemaNotFoundError:
        return []
    except kv.ValidationError as e:
        return [(dotted(list(e.path)), plain_message(e))]
    return []
