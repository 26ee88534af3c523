import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m3ad_rl.core.output_format import Box, ParseConfig, iou, parse, parse_boxes, render
from m3ad_rl.data.simulated_responses import make_records

CANON = """<think>The pin at the top looks fine. Initial answer: no.</think>
<reflection>Looking again, the upper pin is bent.</reflection>
<type>bent, scratch</type>
<location>(0.383,0.706)(0.409,0.801); (0.10,0.20)(0.30,0.41)</location>
<answer>yes</answer>"""


def test_canonical_reflective_output():
    p = parse(CANON)
    assert p.well_formed and not p.problems
    assert p.think.startswith("The pin") and p.reflection.startswith("Looking again")
    assert p.initial == "no" and p.initial_source == "marker"
    assert p.answer == "yes"
    assert p.types == ["bent", "scratch"]
    assert [b.as_list() for b in p.boxes] == [[0.383, 0.706, 0.409, 0.801], [0.10, 0.20, 0.30, 0.41]]
    assert p.tag_order == ["think", "reflection", "type", "location", "answer"]


def test_normal_verdict():
    p = parse("<think>All good. Initial answer: no.</think><answer>no</answer>")
    assert p.well_formed and p.answer == "no" and p.types == [] and p.boxes == [] and p.reflection is None


@pytest.mark.parametrize(
    "loc",
    [
        "(0.1,0.2)(0.3,0.4)",
        "(0.1, 0.2) (0.3, 0.4)",
        "(0.1,0.2), (0.3,0.4)",
        "[0.1,0.2,0.3,0.4]",
        "[0.1, 0.2, 0.3, 0.4]",
        "(0.3,0.4)(0.1,0.2)",
        "  [ 0.1 ,0.2 , 0.3,0.4 ] ",
    ],
)
def test_box_syntaxes_and_corner_order(loc):
    boxes = parse_boxes(loc)
    assert [b.as_list() for b in boxes] == [[0.1, 0.2, 0.3, 0.4]]


def test_box_scales():
    assert parse_boxes("[100,200,300,400]", ParseConfig(box_scale="grid1000"))[0].as_list() == pytest.approx(
        [0.1, 0.2, 0.3, 0.4]
    )
    assert parse_boxes("[64,32,128,96]", ParseConfig(box_scale="pixels"), image_size=(256, 128))[
        0
    ].as_list() == pytest.approx([0.25, 0.25, 0.5, 0.75])
    problems = []
    assert parse_boxes("[1,2,3,4]", ParseConfig(box_scale="pixels"), problems=problems) == []
    assert "image size" in problems[0]


def test_clamp_and_degenerate_boxes_are_reported():
    problems = []
    boxes = parse_boxes("(-0.2,0.1)(0.5,1.3); (0.4,0.4)(0.4,0.9); garbage", problems=problems)
    assert [b.as_list() for b in boxes] == [[0.0, 0.1, 0.5, 1.0]]
    assert any("clamped" in p for p in problems)
    assert any("degenerate" in p for p in problems)
    assert any("unreadable" in p for p in problems)


def test_initial_answer_is_the_last_marker():
    p = parse(
        "<think>Initial answer: yes. Hmm. Initial Answer: **No**</think><reflection>x</reflection><answer>no</answer>"
    )
    assert p.initial == "no"


@pytest.mark.parametrize(
    ("think", "initial"),
    [
        ("The surface shows a long scratch.", "yes"),
        ("I see a scratch. After checking, there are no defects on this part.", "no"),
        ("The object appears to be normal and intact.", "no"),
        ("There is a defect on the left. The lighting is even.", "yes"),  # last sentence decides nothing
        ("There is no scratch on it.", "no"),
        ("Lighting is even and the colour uniform.", None),
    ],
)
def test_initial_keyword_rule(think, initial):
    p = parse(f"<think>{think}</think><reflection>r</reflection><answer>yes</answer>")
    assert p.initial == initial
    assert p.initial_source == (None if initial is None else "keyword")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("<think>a</think>", "no <answer>"),
        ("<answer>yes</answer>", "no <think>"),
        ("<think>a<answer>yes</answer>", "<think> not closed"),
        ("<think>a</think></type><answer>no</answer>", "stray </type>"),
        ("<answer>no</answer><think>a</think>", "<think> is not the first tag"),
        ("<think>a</think><answer>no</answer><reflection>b</reflection>", "<reflection> does not follow <think>"),
        ("<think>a</think><answer>no</answer><answer>yes</answer>", "more than once"),
        ("<think>a</think><answer>maybe</answer>", "not yes/no"),
    ],
)
def test_malformed_outputs_are_reported_not_raised(text, problem):
    p = parse(text)
    assert not p.well_formed or "yes/no" in problem
    assert any(problem in x for x in p.problems), p.problems


def test_repeated_tags_first_think_last_answer():
    p = parse("<think>first</think><think>second</think><answer>no</answer><answer>yes</answer>")
    assert p.think == "first" and p.answer == "yes" and not p.well_formed


def test_text_outside_tags_is_a_problem_but_still_well_formed():
    p = parse("Sure! <think>a</think> <answer>no</answer> bye")
    assert p.well_formed and "text outside the tags" in p.problems


def test_non_string_input():
    assert parse(None).problems == ["response is NoneType, not text"]
    assert parse(b"<answer>yes</answer>").answer is None


def test_render_rules():
    with pytest.raises(ValueError):
        render(think="t", answer="yes")  # yes needs types and boxes
    text = render(think="t", answer="no", types=["x"], boxes=[[0, 0, 1, 1]])
    assert "<type>" not in text and "<location>" not in text


def test_iou():
    assert iou(Box(0, 0, 1, 1), Box(0, 0, 1, 1)) == 1.0
    assert iou(Box(0, 0, 0.5, 1), Box(0.5, 0, 1, 1)) == 0.0
    assert iou(Box(0, 0, 1, 0.5), Box(0, 0, 0.4, 0.5)) == pytest.approx(0.4)


# ---------------------------------------------------------------- properties (hypothesis)

_coord = st.floats(0, 1, allow_nan=False).map(lambda v: round(v, 3))


@st.composite
def structured(draw):
    answer = draw(st.sampled_from(["yes", "no"]))
    initial = draw(st.sampled_from(["yes", "no", None]))
    reflection = draw(st.one_of(st.none(), st.text(st.characters(blacklist_characters="<>"), max_size=50)))
    types, boxes = [], []
    if answer == "yes":
        types = draw(
            st.lists(st.sampled_from(["bent", "scratch", "component missing", "hole"]), min_size=1, max_size=3)
        )
        for _ in range(draw(st.integers(1, 3))):
            x1, x2 = sorted(draw(st.lists(_coord, min_size=2, max_size=2, unique=True)))
            y1, y2 = sorted(draw(st.lists(_coord, min_size=2, max_size=2, unique=True)))
            boxes.append([x1, y1, x2, y2])
    think = draw(st.text(st.characters(blacklist_characters="<>"), max_size=80))
    return dict(think=think, answer=answer, initial=initial, reflection=reflection, types=types, boxes=boxes)


@given(structured())
@settings(max_examples=300, deadline=None)
def test_render_then_parse_round_trips(s):
    p = parse(render(**s))
    assert p.well_formed
    assert p.answer == s["answer"]
    if s["initial"] is not None:
        assert p.initial == s["initial"]
    assert (p.reflection is not None) == (s["reflection"] is not None)
    assert p.types == s["types"]
    assert [c for b in p.boxes for c in b.as_list()] == pytest.approx([c for b in s["boxes"] for c in b], abs=1e-9)


_TOKENS = [
    "<think>",
    "</think>",
    "<reflection>",
    "</reflection>",
    "<type>",
    "</type>",
    "<location>",
    "</location>",
    "<answer>",
    "</answer>",
    "yes",
    "no",
    "(0.1,0.2)",
    "(0.3,0.4)",
    "[",
    "]",
    ",",
    ";",
    "Initial answer:",
    "-1e9",
    "1000",
    "NaN",
    "\x00",
    "é",
    "\n",
    "scratch",
    "  ",
]


@given(st.lists(st.one_of(st.sampled_from(_TOKENS), st.text(max_size=8)), max_size=40).map("".join))
@settings(max_examples=1500, deadline=None)
def test_parse_never_raises_on_random_text(text):
    p = parse(text)
    assert isinstance(p.problems, list)
    for b in p.boxes:
        assert 0 <= b.x1 < b.x2 <= 1 and 0 <= b.y1 < b.y2 <= 1


_VALID = [r["response"] for r in make_records(30, seed=3)]


@given(
    st.sampled_from(_VALID),
    st.lists(
        st.tuples(st.integers(0, 10**6), st.integers(0, 40), st.sampled_from([*_TOKENS, "", "<", ">", "/"])), max_size=6
    ),
)
@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_parse_never_raises_on_mutated_outputs(text, edits):
    for pos, cut, insert in edits:  # delete a span and insert a token somewhere
        pos %= len(text) + 1
        text = text[:pos] + insert + text[pos + cut :]
    for scale in ("normalized", "grid1000", "pixels"):
        p = parse(text, ParseConfig(box_scale=scale), image_size=random.choice([None, (448, 448)]))
        assert p.answer in (None, "yes", "no") and p.initial in (None, "yes", "no")
