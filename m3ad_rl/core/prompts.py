"""The question the model is asked (SPEC §2), shared by SFT data, RL data and evaluation."""

from __future__ import annotations

from m3ad_rl.core.taxonomy import default_taxonomy

QUESTION = "Are there any defects in the test image?"

FORMAT_INSTRUCTIONS = (
    "First reason inside <think>...</think> and end the reasoning with 'Initial answer: yes.' or "
    "'Initial answer: no.'. If you are unsure of that first judgment, re-examine the image inside "
    "<reflection>...</reflection>. If there is a defect, name its type(s) in <type>...</type> "
    "(comma-separated) and give one box per defect in <location>(x1,y1)(x2,y2); ...</location> with "
    "coordinates normalised to [0,1] of the image. Finish with <answer>yes</answer> or <answer>no</answer>."
)


def question(with_types: bool = False) -> str:
    """The user text: question, format instructions and, optionally, the fine-type list."""
    text = f"{QUESTION} {FORMAT_INSTRUCTIONS}"
    if with_types:
        names = ", ".join(n.name for n in default_taxonomy().fine_types)
        text += f" Possible defect types: {names}."
    return text
