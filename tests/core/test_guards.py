"""Guards every command makes: no output over an input, files and folders where they belong,
free ports, and one-line errors with documented exit codes (Ctrl-C, --debug)."""

import json
import re
import socket
from pathlib import Path

import pytest

import m3ad_rl.cli.eval  # noqa: F401 (cli.eval below)
from m3ad_rl import cli
from m3ad_rl.cli import main
from m3ad_rl.core.errors import EXIT_DATA, EXIT_INTERRUPTED, EXIT_USAGE, UsageError
from m3ad_rl.core.guards import check_port_free, location, refuse_overwrite, require_file, require_output_file
from m3ad_rl.data.store import read_manifest, write_dataset
from m3ad_rl.data.synthetic import SynthConfig, generate
from tests.helpers import out

GT = {"label": "normal", "defects": []}
README = Path(__file__).resolve().parents[2] / "README.md"


def _one_line(err: str) -> str:
    """The error line of a failed command: one line, no traceback."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("m3ad-rl:")]
    assert len(lines) == 1, err
    return lines[0]


def _preds(path: Path, n: int = 3) -> str:
    rows = [{"id": str(i), "scene": "texture", "response": out("no"), "ground_truth": GT} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("guards") / "synth")
    write_dataset(url, generate(SynthConfig(n=12, seed=0, size=64)))
    return url


# -- refuse_overwrite --------------------------------------------------------------------------


def test_the_same_place_however_it_is_spelt(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "d")
    for a, b in [("f.jsonl", str(tmp_path / "f.jsonl")), ("d/x", "link/x"), ("d/../d/x", "d/x/")]:
        with pytest.raises(UsageError, match="would write over what it reads"):
            refuse_overwrite([a], [b])
    with pytest.raises(UsageError, match="is the input"):
        refuse_overwrite(["memory://ds"], ["memory://ds/"])
    assert location("memory://a/b/../c") == location("memory:///a/c")


def test_an_output_folder_containing_an_input_or_inside_one_is_refused(tmp_path):
    with pytest.raises(UsageError, match="contains the input"):
        refuse_overwrite([tmp_path / "split/ft"], [tmp_path / "split"])
    with pytest.raises(UsageError, match="is inside the input"):
        refuse_overwrite([tmp_path / "synth"], [tmp_path / "synth/stats.png"])
    with pytest.raises(UsageError, match=r"outputs .* overlap"):
        refuse_overwrite([], [tmp_path / "r.json", tmp_path / "r.json"])
    # neighbours, other file systems and absent options are fine
    refuse_overwrite([tmp_path / "data/a", None], [tmp_path / "data/ab", "memory://data/a", None])


def test_reward_score_does_not_empty_its_input(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "response": out("no"), "ground_truth": GT}) + "\n")
    before = src.read_text()
    assert main(["reward", "score", "--input", str(src), "--output", str(tmp_path / "." / "in.jsonl")]) == EXIT_USAGE
    assert "would write over what it reads" in _one_line(capsys.readouterr().err)
    assert src.read_text() == before


def test_eval_score_does_not_replace_its_predictions(tmp_path, capsys):
    src = _preds(tmp_path / "preds.jsonl")
    before = Path(src).read_text()
    assert main(["eval", "score", "--input", src, "--output", src]) == EXIT_USAGE
    assert main(["eval", "score", "--input", src, "--output", str(tmp_path / "r.json"), "--markdown", src]) == 2
    assert Path(src).read_text() == before and not (tmp_path / "r.json").exists()
    capsys.readouterr()


@pytest.mark.parametrize(
    "argv",
    [
        ["data", "split", "--input", "{ds}", "--out", "{ds}/.."],  # a folder that holds the input
        ["data", "split", "--input", "{ds}", "--out", "{ds}"],
        ["data", "build-ft", "--input", "{ds}", "--predictions", "{preds}", "--out", "{ds}"],
        ["data", "build-ft", "--input", "{ds}", "--predictions", "{preds}", "--out", "{preds}"],
        ["data", "import", "--dataset", "mvtec-ad", "--root", "{ds}", "--out", "{ds}"],
        ["data", "stats", "--input", "{ds}", "--plot", "{ds}/stats.png"],
        ["data", "gallery", "--input", "{ds}", "--out", "{ds}/part-00000.png"],
        ["data", "synth", "--out", "{cfg}", "--config", "{cfg}"],
    ],
)
def test_data_commands_refuse_to_write_over_their_inputs(argv, dataset, tmp_path, capsys):
    preds = _preds(tmp_path / "preds.jsonl")
    cfg = tmp_path / "synth.yaml"
    cfg.write_text("size: 64\n")
    manifest = read_manifest(dataset)
    argv = [a.format(ds=dataset, preds=preds, cfg=cfg) for a in argv]
    assert main(argv) == EXIT_USAGE
    assert "would write over what it reads" in _one_line(capsys.readouterr().err)
    assert read_manifest(dataset) == manifest and cfg.read_text() == "size: 64\n"
    assert sorted(p.name for p in Path(dataset).iterdir()) == [
        ".m3ad-output.json",
        "manifest.json",
        "part-00000.parquet",
    ]


# -- files and folders ---------------------------------------------------------------------------


def test_a_folder_where_a_file_belongs_and_the_reverse(tmp_path, dataset, capsys):
    src = _preds(tmp_path / "preds.jsonl")
    cases = [
        (["reward", "score", "--input", str(tmp_path), "--output", str(tmp_path / "o.jsonl")], "is a folder"),
        (["eval", "score", "--input", src, "--output", str(tmp_path)], "is a folder"),
        (["eval", "score", "--input", src, "--output", f"{src}/r.json"], "is a file, not a folder"),
        (["data", "stats", "--input", src], "is a file, a dataset folder was expected"),
        (["data", "build-ft", "--input", dataset, "--predictions", str(tmp_path), "--out", str(tmp_path / "o")],
         "is a folder"),
        (["data", "synth", "--out", src, "--n", "2"], "is a file, a folder was expected"),
        (["data", "gallery", "--input", dataset, "--out", str(tmp_path / "sheet")], "must end in .png"),
        (["data", "stats", "--input", dataset, "--plot", str(tmp_path / "stats")], "must end in .png"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(argv) == EXIT_USAGE, argv
        assert message in _one_line(capsys.readouterr().err), argv
    with pytest.raises(UsageError, match="does not exist"):
        require_file(tmp_path / "nothing.jsonl")
    require_output_file(tmp_path / "new/dir/file.json")  # folders to be made are fine


def test_a_missing_dataset_is_named(tmp_path, capsys):
    for argv in (["data", "stats", "--input", str(tmp_path / "nope")], ["data", "stats", "--input", "memory://nope"]):
        assert main(argv) == EXIT_USAGE
        line = _one_line(capsys.readouterr().err)
        assert f"no dataset at {argv[-1]}: the path does not exist" in line and "None" not in line
    (tmp_path / "empty").mkdir()
    assert main(["data", "stats", "--input", str(tmp_path / "empty")]) == EXIT_DATA
    assert "has no manifest.json" in _one_line(capsys.readouterr().err)


# -- ports ------------------------------------------------------------------------------------------


@pytest.fixture
def busy_port():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def test_a_port_in_use_is_refused_before_anything_starts(busy_port, tmp_path, capsys, monkeypatch):
    with pytest.raises(UsageError, match=f"port {busy_port} on 127.0.0.1 is in use"):
        check_port_free("127.0.0.1", busy_port)
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    rc = main(["serve", "rewards", "--port", str(busy_port)])
    assert rc == EXIT_USAGE and "is in use — choose another --port" in _one_line(capsys.readouterr().err)
    import m3ad_rl.engines as engines

    monkeypatch.setattr(engines, "make_engine", lambda *a, **k: pytest.fail("the model was loaded"))
    rc = main(["serve", "openai", "--model", str(tmp_path), "--port", str(busy_port)])
    assert rc == EXIT_USAGE and "is in use" in _one_line(capsys.readouterr().err)


def test_a_free_port_passes():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    check_port_free("127.0.0.1", port)


# -- the error family in main() ------------------------------------------------------------------


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.eval, "cmd_taxonomy", interrupted)
    assert main(["taxonomy"]) == EXIT_INTERRUPTED
    assert _one_line(capsys.readouterr().err).startswith("m3ad-rl: interrupted — ")


def test_debug_shows_the_traceback(tmp_path, capsys):
    argv = ["reward", "score", "--input", str(tmp_path), "--output", str(tmp_path / "o.jsonl")]
    assert main(["--debug", *argv]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("m3ad-rl: --input")


@pytest.mark.parametrize(
    "argv",
    [
        ["data", "synth", "--out", "memory://x", "--n", "-3"],
        ["data", "synth", "--out", "memory://x", "--workers", "0"],
        ["data", "gallery", "--input", "memory://x", "--out", "g.png", "--n", "0"],
        ["data", "import", "--dataset", "mnist", "--root", ".", "--out", "memory://x"],
        ["serve", "openai", "--model", "m", "--port", "70000"],
    ],
)
def test_bad_values_are_usage_errors(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == EXIT_USAGE


def test_unknown_scenes_and_categories_in_configs(capsys, tmp_path):
    never = str(tmp_path / "never")
    for setting, listed in [("scenes=[texure]", "texture, workpiece"), ("categories=[woood]", "brick, gravel")]:
        assert main(["data", "synth", "--out", never, "--n", "2", "--set", setting]) == EXIT_USAGE
        line = _one_line(capsys.readouterr().err)
        assert "config error" in line and listed in line
    assert not (tmp_path / "never").exists()
    assert main(["data", "import", "--dataset", "folder", "--root", ".", "--out", never,
                 "--scene", "kitchen", "--category", "x"]) == EXIT_USAGE  # fmt: skip
    assert "scene 'kitchen' is not one of texture" in _one_line(capsys.readouterr().err)


def test_readme_lists_every_exit_code():
    from m3ad_rl.core import errors

    section = README.read_text().split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(c) for c in re.findall(r"^\| (\d+) \|", section, flags=re.M)}
    codes = {v for k, v in vars(errors).items() if k.startswith("EXIT_")}
    assert codes | {1} == documented


def test_a_file_where_a_folder_should_be_is_a_usage_error(tmp_path, capsys):
    """`check learning --out FILE`: the output contract refuses it before anything runs; one line and exit 2."""
    (tmp_path / "f").write_text("x")
    assert main(["check", "learning", "--out", str(tmp_path / "f"), "--seeds", "0"]) == 2
    assert _one_line(capsys.readouterr().err).endswith("is a file, a folder was expected — give a folder path")
    assert (tmp_path / "f").read_text() == "x"
