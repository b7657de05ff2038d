"""Parsers on realistic model outputs: every case of our catalogue (benchmarks/parser_catalogue.py) read as its
true content through each stage's parser and rules, then the behaviours that matter one by one: what is salvaged
from an output cut off at max_tokens, LaTeX in JSON strings, verdicts, scores, final answers, drop rules."""

import pytest

from benchmarks.parser_bench import score_case
from benchmarks.parser_catalogue import CASES, DIVERGENCE, QUOTIENT, as_json, single_backslashes
from megascience.udfs.llm_calls import ParseError
from megascience.udfs.parsers import (
    SAME_PROBLEM,
    boxed_contents,
    final_answer,
    json_values,
    missing_material_reference,
    parse_flags,
    parse_grade,
    parse_json_object,
    parse_qa_pairs,
    parse_refined,
    parse_yes_no,
    source_reference,
)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_catalogue_case_is_read_as_its_true_content(case):
    tally = {"pairs": 0, "pairs_intact": 0, "verdict_flips": 0, "legit_dropped": 0, "truncated_kept": 0}
    assert score_case(case, tally) == "exact"


# --- JSON --------------------------------------------------------------------------------------------------------


def test_json_values_skip_prose_braces_and_say_where_a_value_was_cut():
    text = r'Let S = {1, 2}. Then \frac{a}{b}. ```json' + '\n{"a": [1, 2], "b": "x"}\n```\nand then {"c": "cut her'
    found = json_values(text)
    assert [f.value for f in found] == [{"a": ["1", "2"], "b": "x"}, {"c": "cut her"}]  # numbers as written
    assert [f.complete for f in found] == [True, False]
    assert found[1].value["c"].complete is False


def test_single_backslash_latex_is_latex_and_escaped_newlines_stay_newlines():
    single = single_backslashes(as_json([QUOTIENT, DIVERGENCE]))
    pairs = parse_qa_pairs(single)["qa_pairs"]
    assert pairs[0]["question"] == QUOTIENT[0] and pairs[1]["answer"] == DIVERGENCE[1]
    assert not any(c in pairs[0]["answer"] for c in "\f\t\b")
    # a model that escapes its LaTeX means \n as a newline, even before a word that names a command
    escaped = '{"qa_pairs": [{"question": "Let $\\\\nu$ be the frequency.\\nnu is in Hz?", "answer": "yes\\ttab"}]}'
    pair = parse_qa_pairs(escaped)["qa_pairs"][0]
    assert pair == {"question": "Let $\\nu$ be the frequency.\nnu is in Hz?", "answer": "yes\ttab"}


def test_json_object_reader_takes_the_last_complete_object_matching_a_schema():
    schema = {"type": "object", "required": ["score"]}
    assert parse_json_object('{"score": 3} then {"a": 1}', schema) == {"score": 3}
    assert parse_json_object('Sure!\n```json\n{"Verdict": "no",}\n```') == {"Verdict": "no"}
    with pytest.raises(ParseError, match="does not match the schema"):
        parse_json_object('{"a": 1}', schema)
    with pytest.raises(ParseError, match="no JSON object"):
        parse_json_object("plain words")
    with pytest.raises(ParseError, match="empty"):
        parse_json_object("   ")


# --- question/answer pairs -------------------------------------------------------------------------------------


def test_a_cut_off_json_answer_keeps_the_complete_pairs_and_names_the_cut_one():
    text = '{"qa_pairs": [{"question": "Q1?", "answer": "A1."}, {"question": "Q2?", "answer": "A2 is half'
    read = parse_qa_pairs(text, "length")
    assert read["qa_pairs"] == [{"question": "Q1?", "answer": "A1."}]
    assert read["cut_pair"] == {"question": "Q2?", "answer": "A2 is half"}
    assert read["output_cut"] is True
    whole = parse_qa_pairs('{"qa_pairs": [{"question": "Q1?", "answer": "A1."}]}', "stop")
    assert (whole["cut_pair"], whole["output_cut"]) == (None, False)
    between = parse_qa_pairs('{"qa_pairs": [{"question": "Q1?", "answer": "A1."}, ', "length")
    assert (len(between["qa_pairs"]), between["cut_pair"], between["output_cut"]) == (1, None, True)


def test_tagged_cut_off_answer_is_cut_but_a_stop_without_closing_tag_is_whole():
    text = "<question>Q1?</question>\n<answer>A1.</answer>\n<question>Q2?</question>\n<answer>A2 goes on"
    cut = parse_qa_pairs(text, "length")
    assert cut["qa_pairs"] == [{"question": "Q1?", "answer": "A1."}] and cut["cut_pair"]["answer"] == "A2 goes on"
    ended = parse_qa_pairs(text + "\n```\nNote: done.", "stop")
    assert ended["qa_pairs"][1] == {"question": "Q2?", "answer": "A2 goes on"} and ended["cut_pair"] is None


def test_an_answerless_question_does_not_swallow_the_next_pair():
    text = "Q: What is the boiling point of water?\nQ: What is 3*3?\nA: 9"
    assert parse_qa_pairs(text)["qa_pairs"] == [
        {"question": "What is the boiling point of water?", "answer": ""},
        {"question": "What is 3*3?", "answer": "9"},
    ]


def test_prose_starting_with_a_is_not_an_answer_label():
    text = "Question: A ball is thrown up at 10 m/s. How high does it go?\nA ball rises until v = 0.\nAnswer: 5.1 m"
    assert parse_qa_pairs(text)["qa_pairs"] == [
        {"question": "A ball is thrown up at 10 m/s. How high does it go?\nA ball rises until v = 0.", "answer": "5.1 m"}
    ]


def test_braces_in_tagged_text_and_garbage():
    text = "<question>Let S = {1, 2, 3}. How many subsets?</question>\n<answer>\\boxed{8}</answer>"
    assert parse_qa_pairs(text)["qa_pairs"] == [{"question": "Let S = {1, 2, 3}. How many subsets?", "answer": "\\boxed{8}"}]
    with pytest.raises(ParseError, match="no question/answer pairs"):
        parse_qa_pairs("I cannot help with that.")


def test_refined_pair_is_cut_only_when_its_answer_was():
    assert parse_refined('{"question": "Q?", "answer": "A."}\nNotes: cut he', "length")["cut"] is False
    assert parse_refined('{"question": "Q?", "answer": "A is', "length")["cut"] is True
    with pytest.raises(ParseError):
        parse_refined("I rewrote it as asked.")


# --- decisions ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,verdict",
    [
        ('{"verdict": "Yes"}', "yes"),
        ("No.", "no"),
        ("Reasoning: the two problems differ.\nFinal answer: No", "no"),
        ("Now let me compare them.\nVerdict: yes", "yes"),
        ("Note that both ask for the speed.\nAnswer: yes", "yes"),
        ("Yes, both are about kinematics, but they are not the same problem.", "no"),
        ('Allowed: {"verdict": "yes"} or {"verdict": "no"}.\n{"verdict": "yes"}', "yes"),
    ],
)
def test_yes_no_decisions(text, verdict):
    assert parse_yes_no(text, "stop", conclusions=SAME_PROBLEM) == verdict


@pytest.mark.parametrize(
    "text",
    [
        "Note: the question is ambiguous.",
        "Now, considering the evidence, it is hard to say.",
        "Nothing to add.",
        "Verdict: yes\nVerdict: no",
        "",
        "The answer could be yes or no depending on the reading of the second problem statement here.",
        '{"verdict": "yes"} or {"verdict": "no"}',
    ],
)
def test_unclear_decisions_are_unparsed(text):
    with pytest.raises(ParseError):
        parse_yes_no(text)


def test_a_cut_off_verdict_is_read_only_from_complete_json():
    with pytest.raises(ParseError, match="cut off"):
        parse_yes_no("Yes, at first sight; however the second one", "length")
    assert parse_yes_no('{"verdict": "no", "why": "the given data diff', "length") == "no"


def test_flags_name_what_is_missing():
    assert parse_flags('{"a": "True", "b": 0}', None, ("a", "b")) == {"a": True, "b": False}
    with pytest.raises(ParseError, match="no readable b"):
        parse_flags('{"a": true}', None, ("a", "b"))


def test_grades_the_last_score_stated_wins_and_out_of_range_is_unparsed():
    assert parse_grade("Score: 4\nAfter checking the units again.\nFinal score: 6/10")["score"] == 6
    assert parse_grade('{"reasoning": "close", "score": "9 out of 10"}') == {"score": 9, "reasoning": "close"}
    with pytest.raises(ParseError, match="not within 0 to 10"):
        parse_grade("Score: 11")
    with pytest.raises(ParseError, match="cut off"):
        parse_grade("Score: 7, though the last step", "length")


# --- final answers ------------------------------------------------------------------------------------------------


def test_boxed_nested_empty_and_unclosed():
    text = r"so \boxed{\frac{1}{2}} and then \boxed{} and finally \boxed{x^{2}+\{1\}} \boxed{unclosed"
    assert boxed_contents(text) == [r"\frac{1}{2}", "", r"x^{2}+\{1\}"]
    assert final_answer(text) == (r"x^{2}+\{1\}", "boxed")


def test_a_final_answer_line_after_the_last_box_is_the_answer():
    assert final_answer("Work...\n**Final answer:** 42 m/s") == ("42 m/s", "final_answer_line")
    assert final_answer("The final answer is 7.") == ("7", "final_answer_line")
    assert final_answer("We get \\boxed{3} first.\nFinal answer: 9 J") == ("9 J", "final_answer_line")
    assert final_answer("Final answer: 9 J, confirmed: \\boxed{9\\ J}") == ("9\\ J", "boxed")
    assert final_answer(r"steps \boxed{} then nothing") is None
    assert final_answer("no conclusion here") is None


# --- drop rules ---------------------------------------------------------------------------------------------------


def test_drop_rules_name_the_rule_and_the_span():
    assert source_reference("According to the passage, the rate doubles.").describe() == (
        "rule source_passage matched 'the passage'"
    )
    assert source_reference("The textbook defines energy as ...").rule == "the_textbook"
    assert source_reference("The passage of current heats the wire.") is None
    assert missing_material_reference("Using equation (8.75), find v.") == ("numbered_equation", "equation (8.75)")
    assert missing_material_reference("From Fig. 4-16 read off the slope.") == ("numbered_figure", "Fig. 4-16")
    assert missing_material_reference("See Table 2.1 for values.").rule == "numbered_table"
    assert missing_material_reference("Solve for x in 2x + 3 = 7.") is None
    assert missing_material_reference("A table of 3 kg rests on the floor.") is None
    assert missing_material_reference("Table 1\n| t | x |\n|---|---|\n| 0 | 1 |\nFrom Table 1, find x at t = 0.") is None
