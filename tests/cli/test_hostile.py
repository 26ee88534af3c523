"""The hostile-input suite: every command that reads or writes, fed what a new user gets wrong.

Each command declares a valid invocation with placeholders for its inputs and outputs (``COMMANDS``); the
suite derives the hostile cases from those declarations (``cases``): outputs that are a user's folder (also
with ``--overwrite``), the input itself, inside an input, a file where a folder goes, ``memory://``, ``-``,
on a read-only file system; inputs that are missing, the wrong kind, empty, damaged or not UTF-8; configs
that are missing, a YAML list, not UTF-8, broken ``--set`` values and non-finite numbers. For every case
the same invariants hold (``_run``):

- the exit code is one the README's table gives for that mistake (2 usage, 5 data);
- stderr has exactly one ``m3ad-rl:`` line and no traceback;
- every file that existed before is byte-identical afterwards, and nothing new was written.

A new command joins by adding its declaration; ``test_every_command_is_declared`` fails until it does (or
is listed in ``EXEMPT`` with the reason it takes no file input or output).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from m3ad_rl.cli import build_parser, main
from m3ad_rl.core.errors import EXIT_DATA, EXIT_USAGE

REPO = Path(__file__).resolve().parents[2]
USAGE, DATA = {EXIT_USAGE}, {EXIT_DATA}


@dataclass(frozen=True)
class Command:
    """A valid invocation: ``{NAME}`` placeholders are files of the sandbox (``inputs``: their kind) or outputs
    (``outputs``: "dir" or "file"). ``overwrite``: the command has --overwrite; ``config``: it takes --config."""

    argv: tuple[str, ...]
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    overwrite: bool = True
    config: bool = False


COMMANDS: dict[str, Command] = {
    "data synth": Command(
        ("data", "synth", "--out", "{OUT}", "--n", "2", "--set", "size=64"), outputs={"OUT": "dir"}, config=True
    ),
    "data import": Command(
        (
            "data",
            "import",
            "--dataset",
            "folder",
            "--root",
            "{ROOT}",
            "--out",
            "{OUT}",
            "--scene",
            "texture",
            "--category",
            "x",
            "--defect-type",
            "scratch",
        ),
        inputs={"ROOT": "folder"},
        outputs={"OUT": "dir"},
    ),
    "data split": Command(
        ("data", "split", "--input", "{DS}", "--out", "{OUT}"),
        inputs={"DS": "dataset"},
        outputs={"OUT": "dir"},
        config=True,
    ),
    "data build-ft": Command(
        ("data", "build-ft", "--input", "{DS}", "--predictions", "{PREDS}", "--out", "{OUT}"),
        inputs={"DS": "dataset", "PREDS": "predictions"},
        outputs={"OUT": "dir"},
        config=True,
    ),
    "data stats": Command(
        ("data", "stats", "--input", "{DS}", "--plot", "{PNG}"), inputs={"DS": "dataset"}, outputs={"PNG": "file"}
    ),
    "data gallery": Command(
        ("data", "gallery", "--input", "{DS}", "--out", "{PNG}"), inputs={"DS": "dataset"}, outputs={"PNG": "file"}
    ),
    "model tiny": Command(("model", "tiny", "--out", "{OUT}"), outputs={"OUT": "dir"}),
    "reward score": Command(
        ("reward", "score", "--input", "{RIN}", "--output", "{JOUT}"),
        inputs={"RIN": "jsonl"},
        outputs={"JOUT": "file"},
        config=True,
    ),
    "eval score": Command(
        ("eval", "score", "--input", "{EIN}", "--output", "{JOUT}", "--markdown", "{MD}"),
        inputs={"EIN": "jsonl"},
        outputs={"JOUT": "file", "MD": "file"},
        config=True,
    ),
    "eval gallery": Command(
        ("eval", "gallery", "--eval", "{PREDS}", "--dataset", "{DS}", "--out", "{HTML}"),
        inputs={"PREDS": "predictions", "DS": "dataset"},
        outputs={"HTML": "file"},
    ),
    "eval run": Command(
        ("eval", "run", "--model", "{MODEL}", "--dataset", "{DS}", "--out", "{OUT}"),
        inputs={"MODEL": "model", "DS": "dataset"},
        outputs={"OUT": "dir"},
        config=True,
    ),
    "train sft": Command(
        ("train", "sft", "--config", "configs/train/sft-cpu.yaml", "--set", "model={MODEL}", "data={SFT}", "out={OUT}"),
        inputs={"MODEL": "model", "SFT": "sft"},
        outputs={"OUT": "dir"},
    ),
    "train rcrl": Command(
        (
            "train",
            "rcrl",
            "--config",
            "configs/train/rcrl-cpu.yaml",
            "--set",
            "model={MODEL}",
            "data={RL}",
            "out={OUT}",
        ),
        inputs={"MODEL": "model", "RL": "rl"},
        outputs={"OUT": "dir"},
    ),
    "sweep render": Command(
        ("sweep", "render", "--config", "configs/sweeps/presets-dev.yaml", "--out", "{OUT}"), outputs={"OUT": "dir"}
    ),
    "reproduce": Command(
        ("reproduce", "--config", "configs/reproduce/cpu-small.yaml", "--out", "{OUT}"),
        outputs={"OUT": "dir"},
        overwrite=False,
    ),
    "check learning": Command(("check", "learning", "--out", "{OUT}"), outputs={"OUT": "dir"}, overwrite=False),
}
EXEMPT = {  # commands with no file input or output of their own, and why
    "eval sweep": "runs `eval run` per model (covered above) from a sweep config",
    "sweep submit": "sends jobs to a Ray cluster; writes nothing locally",
    "sweep run": "sends jobs to a Ray cluster; writes its report and node timeline under out (tests/k8s/test_pool.py)",
    "sweep report": "reads run folders and writes its report into one (covered by tests/k8s/test_sweep.py)",
    "serve openai": "a server; its model is checked like eval run's (tests/engines)",
    "serve rewards": "a server; no file input or output",
    "k8s validate": "reads manifests, writes nothing",
    "k8s pipeline": "talks to a Kubernetes API, writes nothing",
    "cluster up": "starts processes under --dir (tests/k8s/test_multinode.py, tests/cli/test_cluster_up.py)",
    "cluster down": "stops what cluster up started",
    "demo": "owns its --out folder and starts over in it",
    "taxonomy": "reads the built-in taxonomy only",
}


def _leaf_commands() -> set[str]:
    import argparse

    out: set[str] = set()

    def walk(p: argparse.ArgumentParser, prefix: list[str]) -> None:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out.add(" ".join(prefix))
            return
        for name, child in subs[0].choices.items():
            walk(child, [*prefix, name])

    walk(build_parser(), [])
    return out


def test_every_command_is_declared():
    assert _leaf_commands() - set(COMMANDS) - set(EXEMPT) == set()
    assert not (set(COMMANDS) | set(EXEMPT)) - _leaf_commands(), "a declared command no longer exists"


# ---- the sandbox: one of each kind of input ---------------------------------------------------------------
@pytest.fixture(scope="module")
def kit(tmp_path_factory, tiny_model):
    """Valid inputs of every kind the declarations name, built once."""
    from m3ad_rl.data.ft import FTConfig, build_ft, make_captioner
    from m3ad_rl.data.store import iter_samples
    from m3ad_rl.data.synthetic import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("kit")
    synthesize(SynthConfig(n=6, seed=2, size=64), str(root / "ds"), progress=False)
    samples = list(iter_samples(str(root / "ds")))
    (root / "preds.jsonl").write_text("".join(json.dumps({"id": s.id, "answer": "yes"}) + "\n" for s in samples))
    build_ft(str(root / "ds"), str(root / "preds.jsonl"), str(root / "ft"), FTConfig(), make_captioner("template"),
             progress=False)  # fmt: skip
    lines = [{"id": s.id, "scene": s.scene, "source": s.source, "ground_truth": s.ground_truth(),
              "response": "<think>x Initial answer: no.</think><answer>no</answer>"} for s in samples]  # fmt: skip
    (root / "in.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (root / "folder/images").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (32, 32), (80, 80, 80)).save(root / "folder/images/a.png")
    return {"DS": root / "ds", "PREDS": root / "preds.jsonl", "RIN": root / "in.jsonl", "EIN": root / "in.jsonl",
            "MODEL": Path(tiny_model), "SFT": root / "ft/sft.parquet", "RL": root / "ft/rl.parquet",
            "ROOT": root / "folder", "FT": root / "ft"}  # fmt: skip


def _fill(argv: tuple[str, ...], values: dict[str, str]) -> list[str]:
    out = []
    for a in argv:
        for k, v in values.items():
            a = a.replace("{" + k + "}", str(v))
        out.append(a)
    return out


@dataclass(frozen=True)
class Case:
    command: str
    what: str
    codes: frozenset[int]
    inputs: dict = field(default_factory=dict)  # placeholder -> a hostile replacement (builder name)
    outputs: dict = field(default_factory=dict)
    extra: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


def cases() -> list[Case]:
    """The hostile cases every declaration gets."""
    out: list[Case] = []
    for name, c in COMMANDS.items():
        for o, kind in c.outputs.items():
            if kind == "dir":
                out.append(Case(name, f"{o} holds a user's files", frozenset(USAGE), outputs={o: "user_dir"}))
                if c.overwrite:
                    out.append(Case(name, f"{o} holds a user's files, --overwrite", frozenset(USAGE),
                                    outputs={o: "user_dir"}, extra=("--overwrite",)))  # fmt: skip
                out.append(Case(name, f"{o} is a file", frozenset(USAGE), outputs={o: "user_file"}))
            else:
                out.append(Case(name, f"{o} is an existing file", frozenset(USAGE), outputs={o: "user_file"}))
                out.append(Case(name, f"{o} is a folder", frozenset(USAGE), outputs={o: "user_dir"}))
                out.append(Case(name, f"{o} is -", frozenset(USAGE), outputs={o: "dash"}))
            out.append(Case(name, f"{o} on memory://", frozenset(USAGE), outputs={o: "memory"}))
            out.append(Case(name, f"{o} on a read-only file system", frozenset(USAGE), outputs={o: "readonly"}))
            for i, ikind in c.inputs.items():
                out.append(Case(name, f"{o} is the input {i}", frozenset(USAGE), outputs={o: f"same:{i}"}))
                if ikind in ("dataset", "model", "folder"):
                    out.append(Case(name, f"{o} inside the input {i}", frozenset(USAGE), outputs={o: f"inside:{i}"}))
        for i, kind in c.inputs.items():
            out.append(Case(name, f"{i} missing", frozenset(USAGE), inputs={i: "missing"}))
            if kind in ("dataset", "model", "folder"):
                out.append(Case(name, f"{i} is a file", frozenset(USAGE), inputs={i: "a_file"}))
            else:
                out.append(Case(name, f"{i} is a folder", frozenset(USAGE), inputs={i: "a_folder"}))
            if kind == "dataset":
                out.append(Case(name, f"{i} is an empty folder", frozenset(DATA), inputs={i: "empty_dir"}))
                out.append(Case(name, f"{i} is a folder of datasets", frozenset(USAGE), inputs={i: "ft_folder"}))
                out.append(Case(name, f"{i} has a renamed column", frozenset(DATA), inputs={i: "renamed_column"}))
            if kind in ("jsonl", "predictions"):
                out.append(Case(name, f"{i} is empty", frozenset(DATA), inputs={i: "empty_file"}))
                out.append(Case(name, f"{i} is not UTF-8", frozenset(DATA), inputs={i: "latin1"}))
            if kind == "model":
                out.append(Case(name, f"{i} has no config.json", frozenset(USAGE), inputs={i: "empty_dir"}))
                out.append(Case(name, f"{i} is a hub id, offline", frozenset(USAGE), inputs={i: "hub_offline"},
                                env=(("HF_HUB_OFFLINE", "1"),)))  # fmt: skip
            if kind in ("sft", "rl"):
                other = "rl" if kind == "sft" else "sft"
                out.append(Case(name, f"{i} is the {other} set", frozenset(USAGE), inputs={i: f"kit:{other.upper()}"}))
        if c.config:
            out.append(Case(name, "--config missing", frozenset(USAGE), extra=("--config", "{NOCONFIG}")))
            out.append(Case(name, "--config a YAML list", frozenset(USAGE), extra=("--config", "{LISTCONFIG}")))
            out.append(Case(name, "--config not UTF-8", frozenset(USAGE), extra=("--config", "{LATIN1CONFIG}")))
            out.append(Case(name, "--set broken YAML", frozenset(USAGE), extra=("--set", "a=[1,")))
    out.append(Case("reward score", "a NaN reward weight", frozenset(USAGE), extra=("--set", "weights.accuracy=.nan")))
    out.append(Case("reward score", "an infinite weight", frozenset(USAGE), extra=("--set", "weights.reflection=inf")))
    out.append(Case("reward score", "box_scale=pixels without image sizes", frozenset(DATA),
                    extra=("--set", "parse.box_scale=pixels")))  # fmt: skip
    out.append(Case("eval score", "exclude_sources names no source", frozenset(USAGE),
                    extra=("--set", "exclude_sources=[real-iad]")))  # fmt: skip
    out.append(Case("eval score", "exclude_sources leaves nothing", frozenset(DATA),
                    extra=("--set", "exclude_sources=[synthetic]")))  # fmt: skip
    out.append(Case("eval run", "exclude_sources names no source", frozenset(USAGE),
                    extra=("--set", "metrics.exclude_sources=[real-iad]")))  # fmt: skip
    out.append(Case("train rcrl", "GRPO groups of one", frozenset(USAGE), extra=("rollout.sampling.n=1",)))
    out.append(Case("train rcrl", "a NaN learning rate", frozenset(USAGE), extra=("actor.optim.lr=nan",)))
    out.append(Case("data split", "an empty benchmark side", frozenset(USAGE), extra=("--set", "bench_fraction=0")))
    no_credentials = (("AWS_ACCESS_KEY_ID", ""), ("AWS_SECRET_ACCESS_KEY", ""), ("AWS_SESSION_TOKEN", ""),
                      ("AWS_PROFILE", ""), ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
                      ("AWS_CONFIG_FILE", "/nonexistent"), ("AWS_EC2_METADATA_DISABLED", "true"),
                      ("AWS_ENDPOINT_URL", ""))  # fmt: skip
    for name in ("data synth", "model tiny", "data build-ft"):
        out.append(Case(name, "OUT on s3:// without credentials", frozenset(USAGE), outputs={"OUT": "s3"},
                        env=no_credentials))  # fmt: skip
    return out


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}  # fmt: skip


def _build(how: str, tmp: Path, kit: dict, name: str) -> str:
    """A hostile input or output path, made in the sandbox ``tmp``."""
    if how == "user_dir":
        (tmp / name).mkdir()
        (tmp / name / "notes.txt").write_text("a user's own file")
        (tmp / name / "part-00000.parquet").write_bytes(b"also the user's")
        return str(tmp / name)
    if how == "user_file":
        (tmp / name).write_text("a user's own file")
        return str(tmp / name)
    if how == "dash":
        return "-"
    if how == "memory":
        return f"memory://hostile/{name}"
    if how == "s3":
        import fsspec

        fsspec.filesystem("s3").clear_instance_cache()  # none made earlier with a test server's credentials
        return f"s3://m3ad-hostile-no-credentials/{name}"
    if how == "readonly":
        ro = tmp / "ro"
        ro.mkdir(exist_ok=True)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "none", str(ro)], capture_output=True).returncode:
            pytest.skip("cannot mount a read-only tmpfs here (not root)")
        return str(ro / name)
    if how.startswith("same:"):
        return str(kit[how[5:]])
    if how.startswith("inside:"):
        return str(Path(kit[how[7:]]) / name)
    if how.startswith("kit:"):
        return str(kit[how[4:]])
    if how == "missing":
        return str(tmp / f"no-{name}")
    if how == "a_file":
        (tmp / f"file-{name}").write_text("x")
        return str(tmp / f"file-{name}")
    if how in ("a_folder", "empty_dir"):
        (tmp / f"dir-{name}").mkdir()
        return str(tmp / f"dir-{name}")
    if how == "ft_folder":
        return str(kit["FT"])
    if how == "renamed_column":
        import shutil

        import pyarrow.parquet as pq

        shutil.copytree(kit["DS"], tmp / f"bad-{name}")
        shard = tmp / f"bad-{name}/part-00000.parquet"
        t = pq.read_table(shard)
        pq.write_table(t.rename_columns(["sample_id" if c == "id" else c for c in t.column_names]), shard)
        return str(tmp / f"bad-{name}")
    if how == "empty_file":
        (tmp / f"empty-{name}.jsonl").write_text("")
        return str(tmp / f"empty-{name}.jsonl")
    if how == "latin1":
        (tmp / f"latin1-{name}.jsonl").write_bytes('{"id": "caf\u00e9", "answer": "yes"}\n'.encode("latin-1"))
        return str(tmp / f"latin1-{name}.jsonl")
    if how == "hub_offline":
        return "someone/not-cached-model"
    raise ValueError(how)


def _run(case: Case, kit: dict, tmp: Path, capsys, monkeypatch) -> None:
    c = COMMANDS[case.command]
    sandbox = tmp / "sandbox"
    sandbox.mkdir()
    values = {**{k: str(v) for k, v in kit.items()}}
    for k in c.outputs:
        values[k] = str(sandbox / ("out.png" if k == "PNG" else "out.md" if k == "MD" else f"out-{k.lower()}"))
    for k, how in {**case.inputs, **case.outputs}.items():
        values[k] = _build(how, sandbox, kit, k.lower())
    (sandbox / "list.yaml").write_text("- a\n- b\n")
    (sandbox / "latin1.yaml").write_bytes("name: caf\u00e9\n".encode("latin-1"))
    values |= {"NOCONFIG": str(sandbox / "nope.yaml"), "LISTCONFIG": str(sandbox / "list.yaml"),
               "LATIN1CONFIG": str(sandbox / "latin1.yaml")}  # fmt: skip
    argv = _fill(c.argv + case.extra, values)
    for k, v in case.env:
        if v:
            monkeypatch.setenv(k, v)
        else:
            monkeypatch.delenv(k, raising=False)
    import ray

    def no_ray(*args, **kwargs):  # every hostile case must be refused before any work starts
        raise AssertionError(f"{argv}: reached ray.init: the mistake was not caught up front")

    monkeypatch.setattr(ray, "init", no_ray)
    watched = [sandbox, Path(kit["DS"]).parent, Path(kit["MODEL"])]
    before = {str(w): _snapshot(w) for w in watched}
    monkeypatch.chdir(REPO)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    finally:
        ro = sandbox / "ro"
        if ro.exists():
            subprocess.run(["umount", str(ro)], capture_output=True)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("m3ad-rl:")]
    assert len(lines) == 1, f"{argv}: expected one m3ad-rl: line, got:\n{err}"
    assert code in case.codes, f"{argv}: exit {code}, expected {sorted(case.codes)}: {lines[0]}"
    after = {str(w): _snapshot(w) for w in watched}
    for w in before:  # nothing changed, nothing new (the read-only mount point aside)
        b, a = before[w], {k: v for k, v in after[w].items() if k != "ro"}
        assert a == {k: v for k, v in b.items() if k != "ro"}, f"{argv} changed {w}: {set(a) ^ set(b) or 'contents'}"
    assert not any(Path(v).exists() for k, v in values.items() if k in c.outputs and k not in case.outputs), argv
    assert not os.path.exists(REPO / "-")


CASES = cases()


@pytest.mark.parametrize("case", CASES, ids=[f"{c.command}: {c.what}" for c in CASES])
def test_hostile_input(case, kit, tmp_path, capsys, monkeypatch):
    _run(case, kit, tmp_path, capsys, monkeypatch)


def test_the_suite_is_large_and_covers_every_declared_command():
    assert len(CASES) >= 150
    assert {c.command for c in CASES} == set(COMMANDS)
