"""The name -> factory registries: refusals, error messages, and the engine/captioner/importer tables."""

import subprocess
import sys

import pytest

from m3ad_rl.core.errors import UsageError
from m3ad_rl.core.registry import Registry, UnknownName


def test_register_get_names_and_refusals():
    reg = Registry("colour")

    @reg.register("red")
    def red() -> str:
        return "r"

    reg.register("blue")(lambda: "b")
    assert reg.get("red") is red and reg.get("blue")() == "b"
    assert reg.names() == ("red", "blue") and "red" in reg and "green" not in reg
    with pytest.raises(ValueError, match="colour 'red' is already registered"):
        reg.register("red")(lambda: "x")
    assert reg.get("red") is red  # the refused duplicate did not replace it
    with pytest.raises(UnknownName) as info:
        reg.get("green")
    assert str(info.value) == "unknown colour 'green'; choose one of: red, blue"  # not KeyError's quoted repr
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_engines_by_name_and_lazily():
    from m3ad_rl.engines import ENGINE_REGISTRY, ENGINES, make_engine

    assert ENGINES == ENGINE_REGISTRY.names() == ("hf", "vllm", "openai")
    with pytest.raises(ValueError, match="unknown engine 'tgi'; choose one of: hf, vllm, openai"):
        make_engine("tgi", "x")
    engine = make_engine("openai", "m", base_url="http://127.0.0.1:9/v1", max_retries=0)
    assert engine.name == "openai" and engine.model == "m"
    code = "import sys, m3ad_rl.engines; print(sorted({'torch', 'transformers', 'vllm', 'openai'} & set(sys.modules)))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"  # the factories import their engine only when called


def test_captioners_by_name():
    from m3ad_rl.data.captioner_openai import OpenAICaptioner
    from m3ad_rl.data.captioner_template import TemplateCaptioner
    from m3ad_rl.data.ft import CAPTIONERS, make_captioner

    assert CAPTIONERS.names() == ("template", "openai")
    options = {"seed": 3, "base_url": "http://127.0.0.1:9/v1", "model": "m", "cache_dir": None}
    template, llm = make_captioner("template", **options), make_captioner("openai", **options)
    assert isinstance(template, TemplateCaptioner) and template.seed == 3
    assert isinstance(llm, OpenAICaptioner) and llm.model == "m" and llm.fs is None
    with pytest.raises(UsageError, match="needs --base-url and --model"):
        make_captioner("openai", seed=0, base_url=None, model="m")
    with pytest.raises(UnknownName, match="unknown captioner 'gpt'; choose one of: template, openai"):
        make_captioner("gpt")


def test_importers_by_name():
    from m3ad_rl.data.importers import DATASETS, IMPORTERS

    assert IMPORTERS.names() == DATASETS
    assert set(DATASETS) == {"mvtec-ad", "mvtec-loco", "visa", "real-iad", "folder"}
    with pytest.raises(UnknownName, match="unknown dataset 'btad'"):
        IMPORTERS.get("btad")
