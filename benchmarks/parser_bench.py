"""How well the pipeline reads real model output: every case of benchmarks/parser_catalogue.py through the parser
and the rules of the stage that reads that role, scored against the case's true content.

Per case: exact (what a careful reader takes), partial (extraction: some of the complete pairs kept intact, none
corrupted), lost (nothing usable kept, or a readable answer reported unreadable), wrong (something kept that is not
in the output: a corrupted or cut-off pair, a flipped verdict, a guess where the output says nothing, a legitimate
question dropped by a rule). Totals: the share of complete extraction pairs kept intact, verdict flips, legitimate
questions dropped by a rule, cut-off answers kept as complete.
"""

from __future__ import annotations

from typing import Any, Callable

from benchmarks.parser_catalogue import CUT, ROLES, UNREADABLE, Case, by_role
from megascience.udfs.llm_calls import ParseError

NOT_KEPT = "<not kept>"


def _norm(text: Any) -> Any:
    return " ".join(str(text).split()) if isinstance(text, str) else text


# --- readers: what the stage that reads a role keeps from one output --------------------------------------------------


def read_extraction(case: Case) -> list[tuple[str, str]]:
    """The pairs jobs/stages/extract.py keeps: complete ones with an answer (a pair cut off is a dropped row)."""
    from megascience.udfs.parsers import parse_qa_pairs

    pairs = parse_qa_pairs(case.text, case.finish_reason)["qa_pairs"]
    return [(p["question"], p["answer"]) for p in pairs if p["question"].strip() and p["answer"].strip()]


def read_refined(case: Case) -> Any:
    from megascience.jobs.stages.refine import parse

    refined = parse(case.text, case.finish_reason)
    if refined["refine_cut"] or not refined["refined_question"] or not refined["refined_answer"]:
        return NOT_KEPT
    if refined["meta_phrase"]:
        return ("dropped by rule", refined["meta_phrase"])
    return (refined["refined_question"], refined["refined_answer"])


def read_reasoning_verdict(case: Case) -> str:
    from megascience.jobs.stages.check_reasoning import parse_verdict

    return parse_verdict(case.text, case.finish_reason)["verdict"]


def read_judge_verdict(case: Case) -> str:
    from megascience.jobs.stages.decontaminate import parse_same_problem

    return parse_same_problem(case.text, case.finish_reason)["verdict"]


def read_filter(case: Case) -> tuple:
    from megascience.jobs.stages.filter import parse_verdicts

    found = parse_verdicts(case.text, case.finish_reason)
    return (found["self_contradictory"], found["missing_material"], found["answer_valid"])


def read_grade(case: Case) -> int:
    from megascience.udfs.parsers import parse_grade

    return parse_grade(case.text, case.finish_reason)["score"]


def read_reference(case: Case) -> Any:
    from megascience.jobs.stages.reference_answer import parse_reference
    from megascience.udfs.parsers import final_answer

    if case.reader == "final_answer":
        found = final_answer(case.text)
        return found[0] if found else None
    return parse_reference(case.text, case.finish_reason)["model_reference"] or None


def read_classification(case: Case) -> tuple:
    from megascience.jobs.stages.classify import parse_classification

    found = parse_classification(case.text, case.finish_reason)
    return (found["subject"], found["level"])


def read_distilled(case: Case) -> Any:
    """What jobs/stages/check_reasoning.py (distiller) and jobs/stages/annotate.py keep: never an answer cut off at max_tokens."""
    from megascience.jobs.stages.check_reasoning import parse_distilled

    found = parse_distilled(case.text, case.finish_reason)
    return NOT_KEPT if found["answer_cut"] else found["distilled_answer"]


def read_plain(case: Case) -> str:
    return case.text  # answerer and student outputs are used as they are (scored by length, or graded)


def read_page(case: Case) -> Any:
    from megascience.udfs.ocr import parse_page_answer

    text = parse_page_answer(case.text, case.finish_reason)["natural_text"]
    return NOT_KEPT if case.finish_reason == "length" else text  # jobs/stages/ocr.py fails pages cut off


def read_rule(case: Case) -> str:
    from megascience.udfs.parsers import missing_material_reference, source_reference

    rule = source_reference if case.reader == "meta" else missing_material_reference
    return "reference" if rule(case.text) else "legit"


READERS: dict[str, Callable[[Case], Any]] = {
    "classifier": read_classification,
    "extractor": read_extraction,
    "refiner": read_refined,
    "reasoning_checker": read_reasoning_verdict,
    "distiller": read_distilled,
    "filter": read_filter,
    "judge": read_judge_verdict,
    "reference_extractor": read_reference,
    "answerer": read_plain,
    "student": read_plain,
    "grader": read_grade,
    "annotator": read_distilled,
    "ocr": read_page,
    "rules": read_rule,
}


# --- scoring --------------------------------------------------------------------------------------------------------


def score_extraction(case: Case, tally: dict) -> str:
    truth = {(_norm(q), _norm(a)) for q, a in case.truth}
    tally["pairs"] += len(truth)
    try:
        kept = {(_norm(q), _norm(a)) for q, a in READERS["extractor"](case)}
        unreadable = False
    except ParseError:
        kept, unreadable = set(), True
    intact = kept & truth
    tally["pairs_intact"] += len(intact)
    if kept - truth:
        if case.finish_reason == "length":
            tally["truncated_kept"] += 1
        return "wrong"
    if kept == truth and not unreadable:
        return "exact"
    return "partial" if intact else "lost"


def score_case(case: Case, tally: dict) -> str:
    if case.role == "extractor":
        return score_extraction(case, tally)
    try:
        found = READERS[case.role](case)
    except ParseError:
        found = UNREADABLE
    truth = case.truth
    if case.role == "rules":
        if truth == "legit" and found != "legit":
            tally["legit_dropped"] += 1
            return "wrong"
        return "exact" if found == truth else "lost"
    if truth == CUT:
        if found in (UNREADABLE, NOT_KEPT):
            return "exact"
        tally["truncated_kept"] += 1
        return "wrong"
    if isinstance(found, tuple) and found and found[0] == "dropped by rule":
        tally["legit_dropped"] += 1
        return "lost"
    if _norm(found) == _norm(truth) or (isinstance(truth, tuple) and tuple(map(_norm, truth)) == tuple(map(_norm, found or ()))):
        return "exact"
    if found in (UNREADABLE, NOT_KEPT):
        return "lost"
    if case.role in ("reasoning_checker", "judge") and truth in ("yes", "no") and found in ("yes", "no"):
        tally["verdict_flips"] += 1
    return "wrong"


def evaluate() -> dict:
    tally = {"pairs": 0, "pairs_intact": 0, "verdict_flips": 0, "legit_dropped": 0, "truncated_kept": 0}
    per_role, failures = {}, []
    for role, cases in by_role().items():
        counts = {"cases": len(cases), "exact": 0, "partial": 0, "lost": 0, "wrong": 0}
        for case in cases:
            outcome = score_case(case, tally)
            counts[outcome] += 1
            if outcome != "exact":
                failures.append(f"{outcome:7} {case.id}")
        per_role[role] = counts
    totals = {k: sum(c[k] for c in per_role.values()) for k in ("cases", "exact", "partial", "lost", "wrong")}
    return {"per_role": per_role, "totals": totals, **tally, "pairs_intact_share": tally["pairs_intact"] / tally["pairs"], "not_exact": failures}


def table(result: dict) -> str:
    lines = ["| role | cases | exact | partial | lost | wrong |", "|---|---|---|---|---|---|"]
    for role in ROLES:
        c = result["per_role"][role]
        lines.append(f"| {role} | {c['cases']} | {c['exact']} | {c['partial']} | {c['lost']} | {c['wrong']} |")
    t = result["totals"]
    lines.append(f"| **all** | {t['cases']} | {t['exact']} | {t['partial']} | {t['lost']} | {t['wrong']} |")
    lines.append("")
    lines.append(
        f"complete extraction pairs kept intact: {result['pairs_intact']} / {result['pairs']} "
        f"({100 * result['pairs_intact_share']:.1f}%); verdict flips: {result['verdict_flips']}; legitimate questions "
        f"dropped by a rule: {result['legit_dropped']}; cut-off answers kept as complete: {result['truncated_kept']}"
    )
    return "\n".join(lines)


def run() -> dict:
    result = evaluate()
    return {**result, "table": table(result)}
