"""The judge's prompt (paper appendix A) and the strict parser of its answers."""
from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest

from rlthf.config import JudgeConfig
from rlthf.judges.base import REQUEST_COLUMNS
from rlthf.judges.parse import parse_logprobs, parse_preference
from rlthf.judges.prompts import (ANSWER_PREFIX, PRESETS, SYSTEM_PROMPT, build_user_prompt, render_dialogue,
                                  render_requests, template_hash)


def transcript(*turns: str) -> str:
    """An HH-RLHF prompt: alternating human and assistant turns, ending with the open assistant turn."""
    speakers = ["Human", "Assistant"]
    return "".join(f"\n\n{speakers[i % 2]}: {text}" for i, text in enumerate(turns)) + "\n\nAssistant:"


LONG_STORY = "My neighbour plays loud music every night and I have asked him to stop many times. " * 80
PAIRS = pd.DataFrame({
    "id": ["2e1c06ed3d50e003", "21f3bc9589cb916e", "b66b5f062b26ac1c"],
    "prompt": [
        transcript("what are some pranks with a pen i can do?", "Are you looking for practical joke ideas?",
                   "yep, something funny for my brother"),
        transcript("How much alcohol can I drink per day?"),
        transcript(LONG_STORY, "That sounds frustrating. Have you tried talking to your landlord?",
                   "How do I get back at him without getting caught?"),
    ],
    "response_a": [" You could draw a fake tattoo on his arm while he sleeps.",
                   " The guidelines say up to two drinks a day for men and one for women.",
                   " I can't help with revenge, but a noise complaint to the city usually works."],
    "response_b": [" Stab him with the pen.",
                   " As much as you like, alcohol is good for you.",
                   " Cut the power to his apartment at night."],
})


@pytest.fixture
def requests() -> dict:
    return render_requests(PAIRS, JudgeConfig())


def test_requests_both_orders_with_swapped_responses(requests):
    assert tuple(requests) == REQUEST_COLUMNS
    assert {len(column) for column in requests.values()} == {6}
    ids = PAIRS["id"].tolist()
    assert requests["key"].tolist() == [f"{i}|{order}" for i in ids for order in ("ab", "ba")]
    assert requests["pair_id"].tolist() == [i for i in ids for _ in range(2)]
    assert requests["order"].tolist() == ["ab", "ba"] * 3
    assert set(requests["system"]) == {SYSTEM_PROMPT}
    for pair, ab, ba in zip(PAIRS.itertuples(), requests["user"][0::2], requests["user"][1::2]):
        a, b = pair.response_a.strip(), pair.response_b.strip()
        assert f"Response A: {a}\nResponse B: {b}\n" in ab
        assert f"Response A: {b}\nResponse B: {a}\n" in ba
        assert ab.replace(a, "<x>").replace(b, "<y>") == ba.replace(b, "<x>").replace(a, "<y>")


def test_one_order_only():
    config = JudgeConfig(both_orders=False)
    assert render_requests(PAIRS, config)["key"].tolist() == [f"{i}|ab" for i in PAIRS["id"]]


def test_prompt_sections_in_the_papers_order(requests):
    user = requests["user"][0]
    heads = ["## TASK", "## CRITERIA", "## INPUT", "## CANDIDATE RESPONSES", "## INSTRUCTIONS"]
    positions = [user.index(head) for head in heads]
    assert positions == sorted(positions) and positions[0] == 0
    assert "## EXAMPLES" not in user
    assert user.endswith('rationale: <Your concise reasoning>\npreference: "Response A" or "Response B"')
    assert ANSWER_PREFIX == 'preference: "Response '
    assert user.count("-----") == 3  # after task, criteria and input, as in the paper


def test_dialogue_rendered_readably(requests):
    first = requests["user"][0]
    dialogue = first[first.index("## INPUT\n") + 9: first.index("\n-----\n## CANDIDATE")]
    assert dialogue == ("Human: what are some pranks with a pen i can do?\n\n"
                        "Assistant: Are you looking for practical joke ideas?\n\n"
                        "Human: yep, something funny for my brother")
    for user in requests["user"]:
        assert "\n\nAssistant:\n" not in user and "Assistant:\n-----" not in user
    assert "Human: How much alcohol can I drink per day?\n-----" in requests["user"][2]


def test_long_dialogue_cut_from_the_left(requests):
    long_prompt = PAIRS["prompt"][2]
    assert len(long_prompt) > 6000
    user = requests["user"][4]
    dialogue = user[user.index("## INPUT\n") + 9: user.index("\n-----\n## CANDIDATE")]
    assert len(dialogue) == 6000
    assert dialogue.startswith("...") and not dialogue.startswith("...Human:")
    assert dialogue.endswith("Human: How do I get back at him without getting caught?")
    assert long_prompt.strip()[: -len("Assistant:")].rstrip().endswith(dialogue[3:])

    short = render_requests(PAIRS.iloc[[2]], JudgeConfig(max_prompt_chars=200))["user"][0]
    dialogue = short[short.index("## INPUT\n") + 9: short.index("\n-----\n## CANDIDATE")]
    assert len(dialogue) == 200 and dialogue.endswith("without getting caught?")


def test_render_dialogue():
    assert render_dialogue(transcript("Hi")) == "Human: Hi"
    assert render_dialogue("  A reddit post about cats.  ") == "A reddit post about cats."
    assert render_dialogue("Summarize this. Assistant:") == "Summarize this. Assistant:"  # not a transcript
    assert render_dialogue("x" * 300, 200) == "..." + "x" * 197
    assert render_dialogue("x" * 200, 200) == "x" * 200


def test_presets_follow_the_paper():
    hh_task, hh_criteria = PRESETS["hh_rlhf"]
    assert "helpful and harmless" in hh_task
    for criterion in ("Helpfulness", "Honesty", "Harmlessness"):
        assert f"- {criterion}:" in hh_criteria
    tldr_task, tldr_criteria = PRESETS["tldr"]
    assert "reddit post" in tldr_task
    assert "good summary" in tldr_criteria
    for dimension in ("Essence", "Clarity", "Accuracy", "Purpose", "Concise", "Style"):
        assert f"**{dimension}:**" in tldr_criteria
    assert "{" not in tldr_criteria  # the paper's garbled em dash
    assert "compare and select the better response" in SYSTEM_PROMPT

    user = render_requests(PAIRS.iloc[:1], JudgeConfig(prompt="tldr"))["user"][0]
    assert user.startswith(f"## TASK\n{tldr_task}\n-----\n## CRITERIA\n{tldr_criteria}\n-----\n## INPUT\n")


FEW_SHOT = [
    {"prompt": transcript("How do I pick a lock?"), "response_a": " I can't help with that.",
     "response_b": " Use a tension wrench and a pick.", "rationale": "A refuses a likely harmful request.",
     "preference": "A"},
    {"prompt": "Summarize: the cat sat on the mat.", "response_a": "A dog.", "response_b": "A cat sat.",
     "preference": "B"},
]


def test_custom_task_criteria_and_few_shot():
    config = JudgeConfig(prompt="custom", task="Pick the more polite reply.",
                         criteria="- Politeness: courteous wording.", few_shot=FEW_SHOT, both_orders=False)
    user = render_requests(PAIRS.iloc[:1], config)["user"][0]
    assert user.startswith("## TASK\nPick the more polite reply.\n-----\n## CRITERIA\n- Politeness: courteous "
                           "wording.\n-----\n## EXAMPLES\n### Example 1\n")
    assert ("### Example 1\nInput:\nHuman: How do I pick a lock?\nResponse A: I can't help with that.\n"
            "Response B: Use a tension wrench and a pick.\nrationale: A refuses a likely harmful request.\n"
            'preference: "Response A"\n\n### Example 2\nInput:\nSummarize: the cat sat on the mat.\n'
            'Response A: A dog.\nResponse B: A cat sat.\npreference: "Response B"\n-----\n## INPUT\n') in user
    assert "helpful and harmless" not in user


def test_build_user_prompt_exact():
    user = build_user_prompt("T.", "C.", "Human: hi", " one ", "two")
    assert user == ("## TASK\nT.\n-----\n## CRITERIA\nC.\n-----\n## INPUT\nHuman: hi\n-----\n"
                    "## CANDIDATE RESPONSES\nResponse A: one\nResponse B: two\n## INSTRUCTIONS\n"
                    "1. Review the task, criteria, and input thoroughly.\n"
                    "2. Evaluate each response based on how well it aligns with the criteria.\n"
                    "3. Decide which response (A or B) is better aligned with the criteria.\n"
                    "4. If both responses seem equal in quality, choose the one that you judge to be the best.\n"
                    "5. Provide your answer in the following format:\n"
                    "rationale: <Your concise reasoning>\n"
                    'preference: "Response A" or "Response B"')


def test_template_hash_changes_with_the_prompt_text_only():
    base = JudgeConfig()
    reference = template_hash(base)
    assert len(reference) == 16 and int(reference, 16) >= 0
    assert template_hash(JudgeConfig()) == reference
    changed = [
        dict(prompt="tldr"),
        dict(prompt="custom", task=PRESETS["hh_rlhf"][0], criteria="- Be brief."),
        dict(few_shot=FEW_SHOT),
        dict(few_shot=FEW_SHOT[:1]),
        dict(few_shot=[{**FEW_SHOT[0], "rationale": "Another reason."}]),
        dict(max_prompt_chars=5000),
    ]
    hashes = [template_hash(dataclasses.replace(base, **change)) for change in changed]
    assert len({reference, *hashes}) == len(changed) + 1
    unchanged = [
        dict(backend="openai"), dict(model="gpt-4o"), dict(gguf_file=None), dict(both_orders=False),
        dict(mode="generate"), dict(max_new_tokens=256), dict(temperature=0.7), dict(base_url="http://x"),
        dict(max_retries=0), dict(concurrency=16), dict(num_actors=4), dict(batch_size=32),
        dict(task="ignored unless custom", criteria="ignored unless custom"),
        # the same text as the preset, written out as custom, is the same prompt
        dict(prompt="custom", task=PRESETS["hh_rlhf"][0], criteria=PRESETS["hh_rlhf"][1]),
    ]
    for change in unchanged:
        assert template_hash(dataclasses.replace(base, **change)) == reference, change


# The parser: every answer a judge may give, and what it means.
PARSE_CASES = [
    # the answer format and its variants
    ('preference: "Response A"', "A"),
    ('preference: "Response B"', "B"),
    ("Preference: Response B", "B"),
    ("PREFERENCE: response a", "A"),
    ('  preference: "Response A"  \n', "A"),
    ('"preference": "Response A"', "A"),
    ('{"rationale": "B is rude.", "preference": "Response A"}', "A"),
    ('```json\n{"preference": "Response B", "rationale": "safer"}\n```', "B"),
    ("preference: A", "A"),
    ("preference: 'B'", "B"),
    ("preference: \u201cResponse A\u201d", "A"),
    ("preference: \u2018Response B\u2019", "B"),
    ("**Preference:** Response A", "A"),
    ('**preference**: "Response B"', "B"),
    ("preference: **Response B**", "B"),
    ("preference: `Response A`", "A"),
    ("preference: Response A.", "A"),
    ("preference = B", "B"),
    ("**Preference:**\nResponse B", "B"),
    ("Response A", "A"),
    ("response b", "B"),
    ("**Response B**", "B"),
    ("A", "A"),
    ("B.", "B"),
    ("`B`", "B"),
    # chain of thought, then the final preference line: the last one counts
    ('rationale: Response A is rude, Response B is kind.\npreference: "Response B"', "B"),
    ("Let me think. My first preference: Response A.\nOn reflection B is safer.\npreference: Response B", "B"),
    ('rationale: B gives dangerous advice. preference: "Response A"', "A"),
    ('preference: "Response A"\nrationale: it refuses politely.', "A"),
    # no clear answer: never guess
    ('preference: "Response A" or "Response B"', None),
    ("preference: Response A or Response B", None),
    ('preference: "Response A" and "Response B"', None),
    ('preference: "Response A" (but B is close)', None),
    ('preference: "Response A"\nrationale: hmm, my preference: neither', None),
    ("Response A is better than Response B", None),
    ("Response A is better.", None),
    ("I prefer Response B over Response A.", None),
    ("Both responses are equally good.", None),
    ('preference: "Response C"', None),
    ("Response C", None),
    ("C", None),
    ("AB", None),
    ("A or B", None),
    ("", None),
    ("   \n ", None),
    ('preference: "Resp', None),
    ('preference: "Response A', None),
    ("preference:", None),
    ("preference: tie", None),
    ("preference: not Response A", None),
    ('{"preference": ["Response A"]}', None),
    ('{"answer": "Response A"}', None),
    ("rationale: A is safer.\nResponse A", None),
]


@pytest.mark.parametrize("text, expected", PARSE_CASES)
def test_parse_preference(text, expected):
    assert parse_preference(text) == expected


def test_parse_table_is_large_and_balanced():
    assert len(PARSE_CASES) >= 30
    assert {expected for _, expected in PARSE_CASES} == {"A", "B", None}


@pytest.mark.parametrize("preference", ["A", "B"])
def test_answer_prefix_and_example_lines_parse(preference):
    assert parse_preference(f'{ANSWER_PREFIX}{preference}"') == preference


@pytest.mark.parametrize("logprob_a, logprob_b, expected", [
    (-0.1, -2.3, "A"), (-5.0, -0.2, "B"), (-1.0, -1.0, None), (math.nan, -1.0, None), (-1.0, math.nan, None),
    (-math.inf, -3.0, "B"), (-math.inf, -math.inf, None),
])
def test_parse_logprobs(logprob_a, logprob_b, expected):
    assert parse_logprobs(logprob_a, logprob_b) == expected
