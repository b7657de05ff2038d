"""Parsers on adversarial model outputs: every decision is right or 'unparsed' (ParseError), never a guess."""

import pytest

from udfs.llm_calls import ParseError
from udfs.parsers import (
    boxed_contents,
    final_answer,
    meta_text,
    missing_material_reference,
    parse_json_object,
    parse_qa_pairs,
    parse_yes_no,
)


def test_json_object_with_prose_fences_and_schema():
    text = 'Sure! Here it is:\n```json\n{"verdict": "no", "note": "x"}\n```\nHope that helps {not json}'
    assert parse_json_object(text) == {"verdict": "no", "note": "x"}
    schema = {"type": "object", "required": ["score"]}
    assert parse_json_object('{"a": 1} then {"score": 3}', schema) == {"score": 3}
    with pytest.raises(ParseError, match="does not match the schema"):
        parse_json_object('{"a": 1}', schema)
    with pytest.raises(ParseError, match="no JSON object"):
        parse_json_object("plain words")
    with pytest.raises(ParseError, match="empty"):
        parse_json_object("   ")


def test_qa_pairs_from_json_and_explicit_none():
    text = '{"qa_pairs": [{"question": " What is 2+2? ", "answer": "4"}]}'
    assert parse_qa_pairs(text) == {"qa_pairs": [{"question": "What is 2+2?", "answer": "4"}]}
    assert parse_qa_pairs('{"qa_pairs": []}') == {"qa_pairs": []}
    assert parse_qa_pairs("NO_QA_PAIRS") == {"qa_pairs": []}
    assert parse_qa_pairs("This excerpt contains no QA pairs.") == {"qa_pairs": []}


def test_qa_pairs_tagged_text_several_pairs_and_markdown_variants():
    text = """<question>Find the derivative of x^2.</question>
<answer>Using the power rule, 2x.</answer>

**Question 2:** A car travels 100 km in 2 h.
What is its mean speed?
**Answer:** 50 km/h.

### Question
Define entropy.
### Solution
A measure of the number of microstates."""
    pairs = parse_qa_pairs(text)["qa_pairs"]
    assert pairs == [
        {"question": "Find the derivative of x^2.", "answer": "Using the power rule, 2x."},
        {"question": "A car travels 100 km in 2 h.\nWhat is its mean speed?", "answer": "50 km/h."},
        {"question": "Define entropy.", "answer": "A measure of the number of microstates."},
    ]


def test_an_answerless_question_does_not_swallow_the_next_pair():
    text = "Q: What is the boiling point of water?\nQ: What is 3*3?\nA: 9"
    assert parse_qa_pairs(text)["qa_pairs"] == [
        {"question": "What is the boiling point of water?", "answer": ""},
        {"question": "What is 3*3?", "answer": "9"},
    ]


def test_prose_starting_with_a_is_not_an_answer_label_and_truncation_keeps_what_is_whole():
    text = "Question: A ball is thrown up at 10 m/s. How high does it go?\nA ball rises until v = 0.\nAnswer: 5.1 m\nQuestion: What is"
    pairs = parse_qa_pairs(text)["qa_pairs"]
    assert pairs[0] == {"question": "A ball is thrown up at 10 m/s. How high does it go?\nA ball rises until v = 0.", "answer": "5.1 m"}
    assert pairs[1] == {"question": "What is", "answer": ""}  # truncated: the stage drops it for having no answer


def test_qa_pairs_with_braces_in_tagged_text_and_garbage():
    text = "<question>Let S = {1, 2, 3}. How many subsets?</question>\n<answer>\\boxed{8}</answer>"
    assert parse_qa_pairs(text)["qa_pairs"] == [{"question": "Let S = {1, 2, 3}. How many subsets?", "answer": "\\boxed{8}"}]
    with pytest.raises(ParseError, match="no question/answer pairs"):
        parse_qa_pairs("I cannot help with that.")


@pytest.mark.parametrize(
    "text,verdict",
    [
        ('{"verdict": "Yes"}', "yes"),
        ("No.", "no"),
        ("Yes, the answer shows its steps.", "yes"),
        ("**Verdict:** no", "no"),
        ("Reasoning: the two problems differ.\nFinal answer: No", "no"),
        ("Now let me compare them.\nVerdict: yes", "yes"),
        ("Note that both ask for the speed.\nAnswer: yes", "yes"),
    ],
)
def test_yes_no_decisions(text, verdict):
    assert parse_yes_no(text) == verdict


@pytest.mark.parametrize(
    "text",
    [
        "Note: the question is ambiguous.",
        "Now, considering the evidence, it is hard to say.",
        "Nothing to add.",
        "Verdict: yes\nVerdict: no",
        "",
        "The answer could be yes or no depending on the reading of the second problem statement here.",
    ],
)
def test_unclear_decisions_are_unparsed(text):
    with pytest.raises(ParseError):
        parse_yes_no(text)


def test_boxed_nested_empty_and_unclosed():
    text = r"so \boxed{\frac{1}{2}} and then \boxed{} and finally \boxed{x^{2}+\{1\}} \boxed{unclosed"
    assert boxed_contents(text) == [r"\frac{1}{2}", "", r"x^{2}+\{1\}"]
    assert final_answer(text) == (r"x^{2}+\{1\}", "boxed")


def test_final_answer_line_and_none():
    assert final_answer("Work...\n**Final answer:** 42 m/s") == ("42 m/s", "final_answer_line")
    assert final_answer("The final answer is 7.") == ("7", "final_answer_line")
    assert final_answer(r"steps \boxed{} then nothing") is None
    assert final_answer("no conclusion here") is None


def test_meta_text_and_missing_material():
    assert meta_text("According to the passage, the rate doubles.") == "According to the passage"
    assert meta_text("As shown in the text above, x = 2") == "As shown in the text"
    assert meta_text("The textbook defines energy as ...") is None
    assert missing_material_reference("Using equation (8.75), find v.") == "equation (8.75)"
    assert missing_material_reference("From Fig. 4-16 read off the slope.") == "Fig. 4-16"
    assert missing_material_reference("See Table 2.1 for values.") == "Table 2.1"
    assert missing_material_reference("Solve for x in 2x + 3 = 7.") is None
    assert missing_material_reference("A table of 3 kg rests on the floor.") is None
