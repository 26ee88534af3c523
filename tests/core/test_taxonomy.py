from collections import Counter
from pathlib import Path

import pytest
import yaml

from m3ad_rl.core.taxonomy import SimilarityConfig, Taxonomy, default_taxonomy, normalize

TAX = default_taxonomy()


def test_41_fine_types_in_the_papers_groups():
    assert len(TAX.fine_types) == 41
    per_l2 = Counter(n.level2 for n in TAX.fine_types)
    assert per_l2 == {
        "foreign material": 3,
        "irregular surface": 8,
        "material anomaly": 4,
        "surface damage": 5,
        "deformation": 3,
        "damage": 7,
        "separation": 2,
        "position errors": 2,
        "completeness errors": 2,
        "configuration errors": 3,
        "specification errors": 2,
    }
    assert Counter(n.level1 for n in TAX.fine_types) == {
        "surface anomaly": 20,
        "structural anomaly": 12,
        "logical anomaly": 9,
    }
    assert all(n.definition for n in TAX.fine_types)


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("scratch", "scratch"),
        ("Scratches", "scratch"),
        ("rust", "rusty"),
        ("missing", "component missing"),
        ("missing_cable", "component missing"),
        ("bent-wire", "bent"),
        ("  Crack. ", "crack"),
        ("oxidation corrosion", "oxidation corrosion"),
        ("corrosion", "corrosion"),
        ("holes", "hole"),
        ("a deep scratch near the rim", "scratch"),
        ("scratch defect", "scratch"),
        ("color", "color error"),
        ("misaligned", "component misalignment"),
        ("dents", "dent"),
        ("Foreign Object", "foreign object intrusion"),
    ],
)
def test_lookup_maps_free_text(text, name):
    assert TAX.lookup(text).name == name


@pytest.mark.parametrize("text", ["", "   ", "banana", "nothing wrong here", 5, None])
def test_lookup_unknown_is_none(text):
    assert TAX.lookup(text) is None


def test_lookup_group_names_give_group_nodes():
    assert TAX.lookup("Surface Damage").level == "level2"
    assert TAX.lookup("structural anomaly").level == "level1"


@pytest.mark.parametrize(
    ("pred", "truth", "s"),
    [
        ("scratch", "scratch", 1.0),
        ("scuff", "scratch", 0.5),
        ("dent", "scratch", 0.25),
        ("bent", "scratch", 0.0),
        ("surface damage", "scratch", 0.5),
        ("surface anomaly", "scratch", 0.25),
        ("deformation", "scratch", 0.0),
        ("logical anomaly", "displacement", 0.25),
        ("position errors", "displacement", 0.5),
    ],
)
def test_similarity_levels(pred, truth, s):
    assert TAX.similarity(TAX.lookup(pred), TAX.get(truth)) == s


def test_similarity_weights_from_config_and_unmapped_scores_zero():
    cfg = SimilarityConfig(same_type=1.0, same_level2=0.7, same_level1=0.1)
    assert TAX.similarity(TAX.lookup("scuff"), TAX.get("scratch"), cfg) == 0.7
    assert TAX.similarity(None, TAX.get("scratch")) == 0.0


def test_every_synonym_maps_to_its_own_node():
    spec = yaml.safe_load(Path("m3ad_rl/resources/taxonomy.yaml").read_text())
    for l1 in spec["level1"]:
        for l2 in l1["level2"]:
            for t in l2["types"]:
                for syn in t["synonyms"]:
                    assert TAX.lookup(syn).name == t["name"], syn


def test_a_synonym_naming_two_types_is_refused():
    spec = yaml.safe_load(Path("m3ad_rl/resources/taxonomy.yaml").read_text())
    spec["level1"][0]["level2"][0]["types"][0]["synonyms"].append("scratch")
    with pytest.raises(ValueError, match="'scratch' names both"):
        Taxonomy(spec)


def test_get_unknown_type_names_it():
    with pytest.raises(KeyError, match="banana"):
        TAX.get("banana")


def test_normalize():
    assert normalize("  The Bent_Wire! ") == "bent wire"
