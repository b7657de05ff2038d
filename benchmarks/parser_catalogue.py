"""Our own catalogue of realistic model outputs for every LLM role, each with the true content a careful reader
takes from it. Data shared by `benchmarks/parser_bench.py` and the parser unit tests (tests/test_parsers.py).

The outputs are written by the team in the styles instruction-tuned models answer in (Llama-3.3-70B, Qwen2.5,
DeepSeek-V3 and the like): clean or fenced JSON, a preamble or trailing notes, capitalised or extra keys, bare
arrays, numbers where text was asked for, trailing commas, unescaped quotes, LaTeX with single backslashes inside
JSON strings, unicode, echoes of the requested format, tagged text with option labels, outputs cut off at
max_tokens. They are constructed, not sampled: they show what a reader must cope with, not how often it happens.

Truth, per role:
- extractor: the tuple of complete (question, answer) pairs the output holds (a pair cut off is not among them);
- refiner: the (question, answer) pair, or CUT when the output was cut off (nothing may be kept);
- reasoning_checker, judge: "yes" / "no", or UNREADABLE when a careful reader could not tell (the reader must say
  so rather than guess);
- filter: (self_contradictory, missing_material, answer_valid), or UNREADABLE;
- grader: the score, or UNREADABLE;
- reference_extractor: the short final answer, None when the output says there is none, or UNREADABLE;
  cases with reader "final_answer" are refined answers read by the rule (last \\boxed{} or final-answer line);
- classifier: (subject, level), or UNREADABLE;
- distiller, annotator, answerer, student: the answer's text, or CUT;
- ocr: the page's natural text, or CUT;
- rules: "legit" (a legitimate question no drop rule may fire on) or "reference" (an unambiguous reference to
  material that is not given, or text that talks about its source, which a rule must catch); reader "meta"
  (refine's rule) or "material" (filter's rule).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from megascience.jobs.platform.llm import ROLES as LLM_ROLES

UNREADABLE = "<unreadable>"
CUT = "<cut off>"

ROLES = (*LLM_ROLES, "rules")  # the pipeline's LLM roles, and the rule-based readers


@dataclass(frozen=True)
class Case:
    id: str
    role: str
    text: str
    truth: Any
    finish_reason: str | None = "stop"
    reader: str = ""  # which reader of the role: "final_answer" (reference), "meta" / "material" (rules)


CASES: list[Case] = []


def case(role: str, id: str, text: str, truth: Any, finish_reason: str | None = "stop", reader: str = "") -> None:
    CASES.append(Case(f"{role}/{id}", role, text, truth, finish_reason, reader))


# --- content the extraction outputs carry -------------------------------------------------------------------------

BALL = (
    "A ball is thrown vertically upward with an initial speed of 12 m/s. Taking g = 9.8 m/s², how high does it rise above the launch point?",
    "At the top v = 0, so v₀² = 2gh and h = v₀²/(2g) = 144/(2 × 9.8) = 7.35 m. The ball rises about 7.3 m.",
)
BALL_TIME = ("How long does the ball thrown upward at 12 m/s take to reach its highest point (g = 9.8 m/s²)?", "t = v₀/g = 12/9.8 = 1.22 s.")
CAR = (
    "A 1500 kg car brakes uniformly from 20 m/s to rest over 40 m. What is the magnitude of the average braking force?",
    "The deceleration is a = v²/(2d) = 400/80 = 5 m/s², so F = ma = 1500 × 5 = 7500 N.",
)
SPRING = (
    "A spring of constant k = 200 N/m is compressed by 0.10 m. How much elastic potential energy does it store?",
    "U = ½kx² = 0.5 × 200 × 0.10² = 1.0 J.",
)
INTEGRAL = (
    r"Evaluate $\int_0^1 x e^{x}\,dx$.",
    r"Integrate by parts with $u = x$ and $dv = e^x\,dx$: $\int_0^1 x e^x\,dx = [x e^x]_0^1 - \int_0^1 e^x\,dx = e - (e - 1) = 1$. So the integral is $\boxed{1}$.",
)
QUOTIENT = (
    r"Find the derivative of $f(x) = \frac{\sin x}{x}$ for $x \neq 0$.",
    r"By the quotient rule, $f'(x) = \frac{x\cos x - \sin x}{x^2}$, so $\boxed{f'(x) = \frac{x\cos x - \sin x}{x^2}}$.",
)
DIVERGENCE = (
    r"Compute $\nabla \cdot \mathbf{F}$ for the field $\mathbf{F} = (x^2, y^2, z^2)$.",
    r"$\nabla \cdot \mathbf{F} = \partial_x x^2 + \partial_y y^2 + \partial_z z^2 = 2x + 2y + 2z$, so $\boxed{2(x + y + z)}$.",
)
TANGENT = (
    r"Solve $\tan\theta = 1$ for $0 \le \theta < \pi$.",
    r"The tangent equals 1 only where $\sin\theta = \cos\theta$; in $[0, \pi)$ that is $\theta = \frac{\pi}{4}$, so $\boxed{\theta = \pi/4}$.",
)
DENSITY = (
    r"A block of volume $2.0 \times 10^{-3}\ \text{m}^3$ has mass 5.4 kg. Find its density $\rho$.",
    r"$\rho = m/V = 5.4 / (2.0 \times 10^{-3}) = 2700\ \text{kg/m}^3$, i.e. $\boxed{2.7 \times 10^{3}\ \text{kg/m}^3}$ (aluminium).",
)
BETA = (
    r"A transistor has current gain $\beta = 100$ and base current $I_B = 20\ \mu\text{A}$. What is the collector current?",
    r"$I_C = \beta I_B = 100 \times 20\ \mu\text{A} = 2\ \text{mA}$, so $\boxed{I_C = 2\ \text{mA}}$.",
)
WAVE = (
    r"A wave has frequency $\nu = 5.0 \times 10^{14}$ Hz. What is its wavelength in vacuum?",
    r"$\lambda = c/\nu = \frac{3.0 \times 10^8}{5.0 \times 10^{14}} = 6.0 \times 10^{-7}$ m $= 600$ nm, so $\boxed{600\ \text{nm}}$.",
)
MOLES = ("How many moles of NaCl are in 29.2 g of the salt (M = 58.44 g/mol)?", "n = m/M = 29.2 g ÷ 58.44 g/mol = 0.500 mol.")
PH = ("What is the pH of a 0.010 M HCl solution?", "HCl dissociates completely, so [H⁺] = 0.010 M and pH = −log(0.010) = 2.00.")
GAS = (
    "What volume does 2.00 mol of an ideal gas occupy at 300 K and 1.00 atm (R = 0.0821 L·atm/(mol·K))?",
    "V = nRT/P = 2.00 × 0.0821 × 300 / 1.00 = 49.3 L.",
)
MITOSIS = (
    "During which phase of mitosis do sister chromatids separate and move to opposite poles?",
    "Anaphase: the cohesin holding the sister chromatids together is cleaved and the kinetochore microtubules shorten, pulling the chromatids to opposite poles.",
)
CROSS = (
    "A cross between two heterozygous pea plants (Tt × Tt) gives 400 offspring. How many are expected to be short (tt)?",
    "The probability of tt is 1/4, so 400 × 1/4 = 100 short plants are expected.",
)
DOSE = ("A patient weighing 70 kg is prescribed a drug at 5 mg/kg. What single dose is given?", "5 mg/kg × 70 kg = 350 mg.")
BINSEARCH = (
    "What is the worst-case time complexity of binary search on a sorted array of n elements, and why?",
    "O(log n): each comparison halves the remaining search interval, so at most ⌈log₂(n + 1)⌉ comparisons are needed.",
)
ELASTICITY = (
    "The price of a good rises from $10 to $12 and the quantity demanded falls from 100 to 80 units. What is the price elasticity of demand by the midpoint method?",
    "%ΔQ = (80 − 100)/90 = −22.2% and %ΔP = (12 − 10)/11 = 18.2%, so E = −22.2/18.2 ≈ −1.22: demand is elastic.",
)
HALF_LIFE = (
    'What does the term "half-life" mean for a radioactive isotope?',
    'The "half-life" is the time in which half of the nuclei of a sample decay; it does not depend on the amount present.',
)
CARBON = ("What is the atomic number of carbon?", "6")
SQUARE = ("What is 12 × 12?", "144")
FREEFALL_STEPS = (
    "A stone is dropped from rest. What is its speed after 2.0 s (g = 9.8 m/s²)?",
    "v = u + gt = 0 + 9.8 × 2.0 = 19.6 m/s\nSo the stone moves at 19.6 m/s after 2.0 s.",
)


def as_json(pairs, indent=None, key="qa_pairs", q="question", a="answer", ascii=False) -> str:
    return json.dumps({key: [{q: x, a: y} for x, y in pairs]}, indent=indent, ensure_ascii=ascii)


def single_backslashes(text: str) -> str:
    """JSON as a model writes it when it forgets that a LaTeX backslash must be escaped."""
    return text.replace("\\\\", "\\")


def cut_inside(text: str, marker: str, keep: int = 12) -> str:
    """`text` cut off `keep` characters after the start of `marker` (where max_tokens stopped the model)."""
    return text[: text.index(marker) + keep]


# --- extractor: JSON ------------------------------------------------------------------------------------------------

case("extractor", "clean-compact", as_json([BALL, BALL_TIME]), (BALL, BALL_TIME))
case("extractor", "clean-pretty", as_json([CAR, SPRING], indent=2), (CAR, SPRING))
case("extractor", "clean-unicode-escaped", as_json([PH, MOLES], ascii=True), (PH, MOLES))
case("extractor", "fenced", "```json\n" + as_json([MITOSIS, CROSS], indent=2) + "\n```", (MITOSIS, CROSS))
case("extractor", "fenced-no-lang", "```\n" + as_json([DOSE]) + "\n```", (DOSE,))
case(
    "extractor",
    "llama-preamble-fenced",
    "Here are the question-answer pairs extracted from the excerpt:\n\n```json\n" + as_json([GAS, MOLES], indent=4) + "\n```",
    (GAS, MOLES),
)
case(
    "extractor",
    "deepseek-trailing-notes",
    "```json\n"
    + as_json([BINSEARCH], indent=2)
    + "\n```\n\n**Notes:**\n- Only the worked example was taken; the exercise at the end has no solution in the excerpt.\n- Units are kept as written.",
    (BINSEARCH,),
)
case(
    "extractor",
    "qwen-preamble-trailing",
    "Based on the excerpt, I found two complete questions.\n\n"
    + as_json([ELASTICITY, DOSE])
    + "\n\nLet me know if you also want the definitions turned into questions.",
    (ELASTICITY, DOSE),
)
case(
    "extractor",
    "extra-keys",
    json.dumps(
        {
            "qa_pairs": [
                {"question": CAR[0], "answer": CAR[1], "difficulty": "medium", "type": "worked example"},
                {"id": 2, "question": SPRING[0], "answer": SPRING[1], "source": "Example 3.2"},
            ]
        },
        indent=2,
        ensure_ascii=False,
    ),
    (CAR, SPRING),
)
case("extractor", "extra-top-level-key", json.dumps({"subject": "physics", "qa_pairs": [dict(question=BALL[0], answer=BALL[1])], "count": 1}, ensure_ascii=False), (BALL,))
case("extractor", "capitalised-keys", as_json([MITOSIS, CROSS], indent=2, key="QA_Pairs", q="Question", a="Answer"), (MITOSIS, CROSS))
case("extractor", "upper-keys", as_json([PH], key="QA_PAIRS", q="QUESTION", a="ANSWER"), (PH,))
case("extractor", "solution-key", as_json([GAS], indent=2, a="solution"), (GAS,))
case("extractor", "bare-array", json.dumps([{"question": x, "answer": y} for x, y in (BALL, CAR)], indent=2, ensure_ascii=False), (BALL, CAR))
case(
    "extractor",
    "bare-array-fenced-preamble",
    "Sure! Here is the list:\n```json\n" + json.dumps([{"question": x, "answer": y} for x, y in (MOLES, PH)], ensure_ascii=False) + "\n```",
    (MOLES, PH),
)
case(
    "extractor",
    "number-answers",
    '{"qa_pairs": [{"question": "What is the atomic number of carbon?", "answer": 6}, {"question": "What is 12 × 12?", "answer": 144}]}',
    (CARBON, SQUARE),
)
case(
    "extractor",
    "list-answer",
    json.dumps({"qa_pairs": [{"question": FREEFALL_STEPS[0], "answer": FREEFALL_STEPS[1].split("\n")}]}, indent=2, ensure_ascii=False),
    (FREEFALL_STEPS,),
)
case(
    "extractor",
    "trailing-comma-in-array",
    '{\n  "qa_pairs": [\n    {"question": "%s", "answer": "%s"},\n    {"question": "%s", "answer": "%s"},\n  ]\n}' % (*DOSE, *BINSEARCH),
    (DOSE, BINSEARCH),
)
case(
    "extractor",
    "trailing-comma-in-object",
    '{"qa_pairs": [{"question": "%s", "answer": "%s",}, {"question": "%s", "answer": "%s",},],}' % (*CAR, *SPRING),
    (CAR, SPRING),
)
case(
    "extractor",
    "unescaped-quotes",
    '{"qa_pairs": [{"question": "%s", "answer": "%s"}, {"question": "%s", "answer": "%s"}]}' % (*HALF_LIFE, *MOLES),
    (HALF_LIFE, MOLES),
)
case(
    "extractor",
    "unescaped-quote-code",
    '{"qa_pairs": [{"question": "In Python, what does len("hello") return?", "answer": "5, the number of characters in "hello"."}]}',
    (('In Python, what does len("hello") return?', '5, the number of characters in "hello".'),),
)
case("extractor", "latex-escaped", as_json([INTEGRAL, QUOTIENT], indent=2), (INTEGRAL, QUOTIENT))
case("extractor", "latex-single-frac", single_backslashes(as_json([QUOTIENT, TANGENT], indent=2)), (QUOTIENT, TANGENT))
case("extractor", "latex-single-nabla", single_backslashes(as_json([DIVERGENCE])), (DIVERGENCE,))
case("extractor", "latex-single-boxed-integral", single_backslashes(as_json([INTEGRAL])), (INTEGRAL,))
case("extractor", "latex-single-rho-text-times", single_backslashes(as_json([DENSITY, BETA], indent=2)), (DENSITY, BETA))
case("extractor", "latex-single-nu-lambda", "```json\n" + single_backslashes(as_json([WAVE], indent=2)) + "\n```", (WAVE,))
case(
    "extractor",
    "latex-mixed-escapes-and-newlines",
    '{"qa_pairs": [{"question": "Find the derivative of $f(x) = \\frac{\\sin x}{x}$ for $x \\neq 0$.", '
    '"answer": "By the quotient rule, $f\'(x) = \\frac{x\\cos x - \\sin x}{x^2}$,\\nso $\\boxed{f\'(x) = \\frac{x\\cos x - \\sin x}{x^2}}$."}]}',
    ((QUOTIENT[0], QUOTIENT[1].replace(", so", ",\nso")),),
)
case("extractor", "unicode-raw", as_json([ELASTICITY, PH, BALL], indent=1), (ELASTICITY, PH, BALL))
case(
    "extractor",
    "format-echo-first",
    'The required format is {"qa_pairs": [{"question": "...", "answer": "..."}]}.\n\n' + as_json([CAR]),
    (CAR,),
)
case(
    "extractor",
    "one-object-per-pair",
    "```json\n"
    + json.dumps({"question": MITOSIS[0], "answer": MITOSIS[1]}, ensure_ascii=False)
    + "\n```\n\n```json\n"
    + json.dumps({"question": CROSS[0], "answer": CROSS[1]}, ensure_ascii=False)
    + "\n```",
    (MITOSIS, CROSS),
)
case("extractor", "empty-json", '{"qa_pairs": []}', ())
case("extractor", "empty-json-fenced-explained", "```json\n{\"qa_pairs\": []}\n```\nThe excerpt only defines terms; it contains no worked problem.", ())
case("extractor", "empty-bare-array", "[]", ())
case("extractor", "missing-answer-then-pair", as_json([("What is the unit of force?", ""), CAR]), (CAR,))

# --- extractor: JSON cut off at max_tokens --------------------------------------------------------------------------

_three = as_json([CAR, SPRING, BALL], indent=2)
case("extractor", "cut-in-third-answer", cut_inside(_three, "At the top", 20), (CAR, SPRING), "length")
case("extractor", "cut-in-third-question", cut_inside(_three, "A ball is thrown", 25), (CAR, SPRING), "length")
case("extractor", "cut-between-pairs", _three[: _three.index('"A ball') - 20], (CAR, SPRING), "length")
case("extractor", "cut-after-answer-string", _three[: _three.index(SPRING[1]) + len(SPRING[1]) + 1], (CAR, SPRING), "length")
case("extractor", "cut-in-first-pair", cut_inside(_three, "The deceleration", 30), (), "length")
case("extractor", "cut-in-key", _three[: _three.index('"answer": "At the top') + 5], (CAR, SPRING), "length")
_latex = single_backslashes(as_json([INTEGRAL, TANGENT, QUOTIENT]))
case("extractor", "cut-latex-single", cut_inside(_latex, "By the quotient", 40), (INTEGRAL, TANGENT), "length")
_fenced = "Here are the pairs:\n\n```json\n" + as_json([MOLES, PH, GAS], indent=2) + "\n```"
case("extractor", "cut-fenced-preamble", cut_inside(_fenced, "V = nRT", 9), (MOLES, PH), "length")
_bare = json.dumps([{"question": x, "answer": y} for x, y in (DOSE, BINSEARCH, ELASTICITY)], indent=2, ensure_ascii=False)
case("extractor", "cut-bare-array", cut_inside(_bare, "%ΔQ", 15), (DOSE, BINSEARCH), "length")
_unescaped = '{"qa_pairs": [{"question": "%s", "answer": "%s"}, {"question": "%s", "answer": "%s"}]}' % (*HALF_LIFE, *MOLES)
case("extractor", "cut-after-unescaped-quotes", cut_inside(_unescaped, "n = m/M", 8), (HALF_LIFE,), "length")

# --- extractor: tagged text -------------------------------------------------------------------------------------------


def tagged(pairs, sep="\n") -> str:
    return sep.join(f"<question>{q}</question>\n<answer>{a}</answer>" for q, a in pairs)


OPTIONS_Q = (
    "Which quantity is conserved in a perfectly inelastic collision?\nA. kinetic energy\nB. linear momentum\nC. both\nD. neither",
    "B. Linear momentum is conserved in every collision without external forces; kinetic energy is not conserved when the bodies stick together.",
)
OPTIONS_PAREN = (
    "Which of the following is a strong acid?\nA) acetic acid\nB) hydrochloric acid\nC) carbonic acid",
    "B) hydrochloric acid, which dissociates completely in water.",
)
OPTIONS_LOWER = (
    "Classify each organism by domain:\na) E. coli\nb) Saccharomyces cerevisiae\nc) Methanococcus",
    "a) Bacteria\nb) Eukarya\nc) Archaea",
)
TWO_SOLUTIONS = (
    "Two solutions are mixed: 50 mL of 0.20 M HCl and 50 mL of 0.10 M NaOH. What is the pH of the mixture?",
    "Solution A: 0.010 mol H⁺.\nSolution B: 0.005 mol OH⁻.\nAfter neutralisation 0.005 mol H⁺ remain in 0.100 L, so [H⁺] = 0.050 M and pH = 1.30.",
)
BOLD_ANSWER_INSIDE = (
    "A resistor of 4 Ω carries a current of 3 A. What power does it dissipate?",
    "P = I²R = 3² × 4 = 36 W.\n**Answer:** 36 W",
)
CHEM_EQUILIBRIUM = (
    "For N₂ + 3H₂ ⇌ 2NH₃ at equilibrium, [N₂] = 0.50 M, [H₂] = 0.20 M and [NH₃] = 0.10 M. Find Kc.",
    "Kc = [NH₃]²/([N₂][H₂]³) = 0.010/(0.50 × 0.008) = 2.5.",
)

case("extractor", "tagged-clean", tagged([BALL, CAR]), (BALL, CAR))
case("extractor", "tagged-blank-lines", tagged([MOLES, PH, GAS], sep="\n\n"), (MOLES, PH, GAS))
case("extractor", "tagged-preamble", "Here are the extracted pairs:\n\n" + tagged([MITOSIS, CROSS], sep="\n\n"), (MITOSIS, CROSS))
case("extractor", "tagged-options-dot", tagged([OPTIONS_Q, SPRING]), (OPTIONS_Q, SPRING))
case("extractor", "tagged-options-paren", tagged([OPTIONS_PAREN]), (OPTIONS_PAREN,))
case("extractor", "tagged-options-lower", tagged([OPTIONS_LOWER, DOSE]), (OPTIONS_LOWER, DOSE))
case("extractor", "tagged-solution-a", tagged([TWO_SOLUTIONS]), (TWO_SOLUTIONS,))
case("extractor", "tagged-bold-answer-inside", tagged([BOLD_ANSWER_INSIDE, CHEM_EQUILIBRIUM]), (BOLD_ANSWER_INSIDE, CHEM_EQUILIBRIUM))
case(
    "extractor",
    "tagged-one-line",
    "".join(f"<question>{q}</question><answer>{a}</answer>\n" for q, a in (DOSE, BINSEARCH)),
    (DOSE, BINSEARCH),
)
case("extractor", "tagged-all-on-one-line", "".join(f"<question>{q}</question> <answer>{a}</answer> " for q, a in (MOLES, PH)), (MOLES, PH))
case(
    "extractor",
    "tagged-trailing-note",
    tagged([CAR, SPRING]) + "\n\nNote: the excerpt's second exercise has no worked solution, so it was left out.",
    (CAR, SPRING),
)
case("extractor", "tagged-trailing-rule-and-note", tagged([ELASTICITY]) + "\n\n---\n\n*All values are copied from the excerpt.*", (ELASTICITY,))
case("extractor", "tagged-fenced", "```xml\n" + tagged([MITOSIS, CROSS]) + "\n```", (MITOSIS, CROSS))
case("extractor", "tagged-fenced-with-notes", "```\n" + tagged([GAS]) + "\n```\nI kept R with its units.", (GAS,))
case("extractor", "tagged-latex", tagged([INTEGRAL, TANGENT, DIVERGENCE]), (INTEGRAL, TANGENT, DIVERGENCE))
case("extractor", "tagged-capital-tags", "\n".join(f"<Question>{q}</Question>\n<Answer>{a}</Answer>" for q, a in (BALL, BALL_TIME)), (BALL, BALL_TIME))
case("extractor", "tagged-no-qa", "NO_QA_PAIRS", ())
case("extractor", "tagged-no-qa-explained", "NO_QA_PAIRS\n\nThe excerpt is a table of contents and has no questions.", ())
case("extractor", "prose-no-pairs", "There are no question-answer pairs in this excerpt that meet the high standard: it only states definitions.", ())
case("extractor", "tagged-echo-first", "Format:\n<question>the question</question>\n<answer>the answer</answer>\n\n" + tagged([CAR]), (CAR,))
case("extractor", "tagged-cut-in-answer", cut_inside(tagged([CAR, SPRING, BALL]), "At the top", 15), (CAR, SPRING), "length")
case("extractor", "tagged-cut-in-question", cut_inside(tagged([MOLES, PH, GAS]), "What volume", 20), (MOLES, PH), "length")
case("extractor", "tagged-cut-after-closing-question", tagged([DOSE, BINSEARCH]).rsplit("<answer>", 1)[0], (DOSE,), "length")

# --- extractor: markdown and labelled text -----------------------------------------------------------------------

case(
    "extractor",
    "markdown-bold-numbered",
    "\n\n".join(f"**Question {i}:** {q}\n**Answer:** {a}" for i, (q, a) in enumerate((CAR, SPRING), 1)),
    (CAR, SPRING),
)
case(
    "extractor",
    "markdown-headers",
    "\n\n".join(f"### Question {i}\n{q}\n\n### Answer\n{a}" for i, (q, a) in enumerate((MOLES, PH), 1)),
    (MOLES, PH),
)
case("extractor", "q-a-colon", "\n\n".join(f"Q: {q}\nA: {a}" for q, a in (DOSE, BINSEARCH)), (DOSE, BINSEARCH))
case(
    "extractor",
    "markdown-options-inside",
    f"**Question 1:** {OPTIONS_Q[0]}\n**Answer:** {OPTIONS_Q[1]}\n\n**Question 2:** {SPRING[0]}\n**Answer:** {SPRING[1]}",
    (OPTIONS_Q, SPRING),
)
case(
    "extractor",
    "markdown-separators",
    "Here are the pairs.\n\n---\n\n" + "\n\n---\n\n".join(f"**Question:** {q}\n\n**Answer:** {a}" for q, a in (MITOSIS, CROSS)) + "\n\n---",
    (MITOSIS, CROSS),
)
case(
    "extractor",
    "markdown-cut",
    "\n\n".join(f"**Question {i}:** {q}\n**Answer:** {a}" for i, (q, a) in enumerate((CAR, SPRING, BALL), 1))[:-25],
    (CAR, SPRING),
    "length",
)


# --- refiner ----------------------------------------------------------------------------------------------------------

R_PROJECTILE = (
    "A ball is thrown vertically upward from the ground with an initial speed of 12 m/s. Neglecting air resistance and taking g = 9.8 m/s², how high above the ground does it rise?",
    r"At the highest point the velocity is zero. From $v^2 = v_0^2 - 2gh$ with $v = 0$: $h = \frac{v_0^2}{2g} = \frac{144}{19.6} = 7.35$ m. So the ball rises $\boxed{7.35\ \text{m}}$.",
)
R_CIRCUIT = (
    "A 12 V battery with negligible internal resistance drives a current through a 4.0 Ω resistor in series with an 8.0 Ω resistor. What is the current?",
    r"The resistors are in series, so $R = 4.0 + 8.0 = 12.0\ \Omega$. Ohm's law gives $I = V/R = 12/12.0 = 1.0$ A. Therefore $\boxed{I = 1.0\ \text{A}}$.",
)
R_QUOTE = (
    'A programmer writes print("Hello, world") in Python 3. What does the program output?',
    r'The call print("Hello, world") writes the string followed by a newline, so the output is Hello, world and the final answer is $\boxed{\text{Hello, world}}$.',
)
R_PLAIN = (
    "A patient weighing 70 kg is prescribed a drug at 5 mg per kg of body weight as a single dose. How many milligrams are given?",
    "The dose is proportional to the body weight: 5 mg/kg × 70 kg = 350 mg. The patient receives \\boxed{350 mg}.",
)


def refined_json(pair, **extra) -> str:
    return json.dumps({"question": pair[0], "answer": pair[1], **extra}, ensure_ascii=False)


case("refiner", "clean", refined_json(R_PROJECTILE), R_PROJECTILE)
case("refiner", "pretty", json.dumps({"question": R_CIRCUIT[0], "answer": R_CIRCUIT[1]}, indent=2, ensure_ascii=False), R_CIRCUIT)
case("refiner", "fenced", "```json\n" + refined_json(R_PLAIN) + "\n```", R_PLAIN)
case("refiner", "preamble-fenced", "Here is the rewritten training example:\n\n```json\n" + refined_json(R_CIRCUIT) + "\n```", R_CIRCUIT)
case(
    "refiner",
    "trailing-notes",
    refined_json(R_PROJECTILE) + "\n\nChanges made: added the value of g and stated that air resistance is neglected.",
    R_PROJECTILE,
)
case("refiner", "extra-key", refined_json(R_PLAIN, changes="added the unit mg/kg"), R_PLAIN)
case("refiner", "capitalised-keys", json.dumps({"Question": R_CIRCUIT[0], "Answer": R_CIRCUIT[1]}, ensure_ascii=False), R_CIRCUIT)
case("refiner", "latex-single", single_backslashes(refined_json(R_PROJECTILE)), R_PROJECTILE)
case("refiner", "latex-single-omega", "```json\n" + single_backslashes(json.dumps({"question": R_CIRCUIT[0], "answer": R_CIRCUIT[1]}, indent=2, ensure_ascii=False)) + "\n```", R_CIRCUIT)
case("refiner", "unescaped-quotes", '{"question": "%s", "answer": "%s"}' % (R_QUOTE[0], R_QUOTE[1].replace("\\", "\\\\")), R_QUOTE)
case("refiner", "trailing-comma", '{\n  "question": "%s",\n  "answer": "%s",\n}' % (R_PLAIN[0], R_PLAIN[1].replace("\\", "\\\\")), R_PLAIN)
case("refiner", "nested-refined", json.dumps({"refined": {"question": R_PLAIN[0], "answer": R_PLAIN[1]}}, ensure_ascii=False), R_PLAIN)
case("refiner", "tagged", f"<question>{R_CIRCUIT[0]}</question>\n<answer>{R_CIRCUIT[1]}</answer>", R_CIRCUIT)
case("refiner", "tagged-trailing-note", f"<question>{R_PLAIN[0]}</question>\n<answer>{R_PLAIN[1]}</answer>\n\nNote: I made the dosing rule explicit.", R_PLAIN)
case(
    "refiner",
    "tagged-answer-line-inside",
    f"<question>{R_PROJECTILE[0]}</question>\n<answer>{R_PROJECTILE[1]}\n\n**Answer:** 7.35 m</answer>",
    (R_PROJECTILE[0], R_PROJECTILE[1] + "\n\n**Answer:** 7.35 m"),
)
case("refiner", "markdown-labels", f"**Question:** {R_CIRCUIT[0]}\n\n**Answer:** {R_CIRCUIT[1]}", R_CIRCUIT)
case("refiner", "refined-labels", f"**Refined Question:**\n{R_PLAIN[0]}\n\n**Refined Answer:**\n{R_PLAIN[1]}", R_PLAIN)
case("refiner", "cut-json", cut_inside(refined_json(R_PROJECTILE), "From $v^2", 30), CUT, "length")
case("refiner", "cut-tagged", cut_inside(f"<question>{R_CIRCUIT[0]}</question>\n<answer>{R_CIRCUIT[1]}</answer>", "Ohm's law", 12), CUT, "length")
case("refiner", "cut-just-before-end", refined_json(R_PLAIN)[:-3], CUT, "length")
case("refiner", "cut-closed-tags", f"<question>{R_PLAIN[0]}</question>\n<answer>{R_PLAIN[1][:60]}", CUT, "length")


# --- reasoning_checker --------------------------------------------------------------------------------------------

for i, (text, truth, finish) in enumerate(
    [
        ('{"verdict": "yes"}', "yes", "stop"),
        ('{"verdict": "no"}', "no", "stop"),
        ('{"Verdict": "Yes"}', "yes", "stop"),
        ('```json\n{"verdict": "no"}\n```', "no", "stop"),
        ("Yes", "yes", "stop"),
        ("No.", "no", "stop"),
        ("**Yes**", "yes", "stop"),
        ("Yes, the answer derives the result step by step from the given data.", "yes", "stop"),
        ("No. The answer only states the final value without any intermediate steps.", "no", "stop"),
        ('{"verdict": "no"}\nThe answer gives only the number.', "no", "stop"),
        ('You asked me to reply with {"verdict": "yes"} or {"verdict": "no"}.\n\n{"verdict": "no"}', "no", "stop"),
        ("Verdict: yes\n\nOn a second look, the answer merely restates the result.\nFinal verdict: no", "no", "stop"),
        ("The answer writes down the formula, substitutes the values and simplifies. Verdict: Yes", "yes", "stop"),
        ("Answer: No", "no", "stop"),
        ("The answer lists the formula and then substitutes the values, so", UNREADABLE, "length"),
        ("Note: the answer is a single number.", UNREADABLE, "stop"),
        ("Yes, it names the law it uses, but the answer does not show its reasoning: no intermediate step is given.", "no", "stop"),
        ('{"verdict": "yes", "reason": "three intermediate steps"}', "yes", "stop"),
    ]
):
    case("reasoning_checker", f"c{i:02d}", text, truth, finish)

# --- judge (decontamination: same problem?) -----------------------------------------------------------------------

for i, (text, truth, finish) in enumerate(
    [
        ('{"verdict": "yes"}', "yes", "stop"),
        ('{"verdict": "no"}', "no", "stop"),
        ('{"verdict": "No"}', "no", "stop"),
        ('```json\n{\n  "verdict": "yes"\n}\n```', "yes", "stop"),
        ("Yes", "yes", "stop"),
        ("no", "no", "stop"),
        ("Yes, both ask for the distance a car covers while braking, but they are not the same problem: the first gives the time and the second the deceleration.", "no", "stop"),
        ("No, they are not the same problem: the benchmark asks for the period, the training question for the amplitude.", "no", "stop"),
        ("These are the same problem with the numbers renamed. Yes.", "yes", "stop"),
        ("The training question renames the objects but keeps the given data and the unknown, so they are the same problem.\n\n{\"verdict\": \"yes\"}", "yes", "stop"),
        ('Reply format: {"verdict": "yes"} or {"verdict": "no"}\n\nAnswer: {"verdict": "no"}', "no", "stop"),
        ('{"verdict": "yes"} or {"verdict": "no"}', UNREADABLE, "stop"),
        ("Verdict: yes\nThe given data differ in substance, though.\nFinal verdict: no", "no", "stop"),
        ("**Verdict:** No\n\n**Reasoning:** the topics match but the quantities asked for differ.", "no", "stop"),
        ("At first sight they look alike. However, the second problem asks", UNREADABLE, "length"),
        ("Yes, both are about enzyme kinetics.", "yes", "stop"),
        ("They are different problems. No.", "no", "stop"),
        ('{"verdict": "no", "explanation": "different given data"}', "no", "stop"),
        ("Both questions ask for the pH of the same solution; they are the same problem.", "yes", "stop"),
        ("The first asks for the force and the second for the work, so these are different problems.", "no", "stop"),
        ("Now, comparing the two: yes, the same problem.", "yes", "stop"),
        ("I cannot tell without the answer options.", UNREADABLE, "stop"),
    ]
):
    case("judge", f"c{i:02d}", text, truth, finish)

# --- filter -----------------------------------------------------------------------------------------------------------

for i, (text, truth, finish) in enumerate(
    [
        ('{"self_contradictory": false, "missing_material": false, "answer_valid": true}', (False, False, True), "stop"),
        ('{"self_contradictory": false, "missing_material": true, "answer_valid": true}', (False, True, True), "stop"),
        ('```json\n{\n  "self_contradictory": true,\n  "missing_material": false,\n  "answer_valid": false\n}\n```', (True, False, False), "stop"),
        ('{"self_contradictory": "false", "missing_material": "false", "answer_valid": "true"}', (False, False, True), "stop"),
        ('{"self_contradictory": False, "missing_material": False, "answer_valid": True}', (False, False, True), "stop"),
        ('{"self_contradictory": "no", "missing_material": "yes", "answer_valid": "yes"}', (False, True, True), "stop"),
        ('{"Self_Contradictory": false, "Missing_Material": false, "Answer_Valid": true}', (False, False, True), "stop"),
        ('{"reasoning": "The answer is consistent and complete.", "self_contradictory": false, "missing_material": false, "answer_valid": true}', (False, False, True), "stop"),
        ('Here is my assessment:\n{"self_contradictory": false, "missing_material": false, "answer_valid": true}\nThe question is self-contained.', (False, False, True), "stop"),
        ('{"self_contradictory": 0, "missing_material": 1, "answer_valid": 1}', (False, True, True), "stop"),
        ('{"self_contradictory": false, "missing_material": false, "answer_valid": true,}', (False, False, True), "stop"),
        ("self_contradictory: false\nmissing_material: false\nanswer_valid: true", (False, False, True), "stop"),
        ("- **self_contradictory**: No\n- **missing_material**: Yes (the question refers to Figure 2)\n- **answer_valid**: Yes", (False, True, True), "stop"),
        ('Format: {"self_contradictory": true|false, "missing_material": true|false, "answer_valid": true|false}\n{"self_contradictory": false, "missing_material": false, "answer_valid": false}', (False, False, False), "stop"),
        ('{"self contradictory": false, "missing material": false, "answer valid": true}', (False, False, True), "stop"),
        ('{"self_contradictory": false, "missing_material": false}', UNREADABLE, "stop"),
        ('{"self_contradictory": false, "missing_material": fal', UNREADABLE, "length"),
        ('{"self_contradictory": "False", "missing_material": "True", "answer_valid": "True"}', (False, True, True), "stop"),
    ]
):
    case("filter", f"c{i:02d}", text, truth, finish)

# --- grader -------------------------------------------------------------------------------------------------------

for i, (text, truth, finish) in enumerate(
    [
        ('{"reasoning": "The final answer matches the reference and the steps are sound.", "score": 10}', 10, "stop"),
        ('{"reasoning": "Right method, arithmetic slip in the last step.", "score": 5}', 5, "stop"),
        ('{"reasoning": "Agrees up to rounding.", "score": "8"}', 8, "stop"),
        ('{"reasoning": "Mostly right.", "score": "7/10"}', 7, "stop"),
        ('{"reasoning": "Between the bands.", "score": 6.5}', 6, "stop"),
        ('```json\n{"reasoning": "The student\'s result is wrong.", "score": 0}\n```', 0, "stop"),
        ('{"Reasoning": "Good.", "Score": 9}', 9, "stop"),
        ('{"score": 3, "reasoning": "Only the first step is correct."}', 3, "stop"),
        ('{"reasoning": "The student writes "v = 12 m/s", which matches.", "score": 10}', 10, "stop"),
        ("The student's final answer agrees with the reference, with a small slip.\n\nScore: 8", 8, "stop"),
        ("Score: 7/10", 7, "stop"),
        ("**8**", 8, "stop"),
        ("Score (0-10): 6", 6, "stop"),
        ("Score: 7\n\nOn reflection the reasoning is fully sound.\nRevised score: 9", 9, "stop"),
        ("I would give this answer a 4 out of 10: the method is right but the result is off.", 4, "stop"),
        ("**Score:** 2\n**Reasoning:** mostly wrong, with a correct first step.", 2, "stop"),
        ("The student's answer differs from the reference because the units were", UNREADABLE, "length"),
        ('{"reasoning": "The answer is partly right", "score": 12}', UNREADABLE, "stop"),
    ]
):
    case("grader", f"c{i:02d}", text, truth, finish)

# --- reference_extractor (the model's reading, and the rule on answers) --------------------------------------------

for i, (text, truth, finish) in enumerate(
    [
        ('{"reference_answer": "42 J"}', "42 J", "stop"),
        ('```json\n{"reference_answer": "7.35 m"}\n```', "7.35 m", "stop"),
        ('{"reference_answer": 350}', "350", "stop"),
        ('{"Reference_Answer": "pH = 2.00"}', "pH = 2.00", "stop"),
        ('{"reference_answer": "\\\\boxed{1.0\\\\ \\\\text{A}}"}', r"1.0\ \text{A}", "stop"),
        ('{"reference_answer": "\\frac{\\pi}{4}"}', r"\frac{\pi}{4}", "stop"),
        ('{"reference_answer": "42 J"}\n\nThe answer concludes that the work done is 42 J.', "42 J", "stop"),
        ('{"reference_answer": "42 J", "note": "the work done on the gas"}', "42 J", "stop"),
        ('{"reference_answer": ""}', None, "stop"),
        ("The short final answer is **42 J**.", "42 J", "stop"),
        ("Reference answer: 2.5", "2.5", "stop"),
        ("42 J", "42 J", "stop"),
        ('{"reference_answer": "Anaphase"', "Anaphase", "length"),
        ("The answer arrives at", UNREADABLE, "length"),
    ]
):
    case("reference_extractor", f"model{i:02d}", text, truth, finish)

for i, (text, truth) in enumerate(
    [
        (r"First $v = \boxed{12\ \text{m/s}}$ at the bottom. The work is then $W = \frac12 m v^2$." + "\nFinal answer: 42 J", "42 J"),
        (r"So $x = 2$. Hence $\boxed{x = 2}$.", "x = 2"),
        ("Step 1: ... Step 2: ...\n" + r"Final answer: $\boxed{5\ \text{m/s}}$", r"5\ \text{m/s}"),
        ("The amount is 7.2 × 10⁻³ mol.\n\n**Final Answer:** 7.2 × 10⁻³ mol", "7.2 × 10⁻³ mol"),
        (r"The intermediate tension is $\boxed{T = 20\ \text{N}}$; the acceleration follows as $a = 2$ m/s². The final answer is 2 m/s².", "2 m/s²"),
        (r"Therefore the correct option is \boxed{B}.", "B"),
        (r"\boxed{\frac{x\cos x - \sin x}{x^2}}", r"\frac{x\cos x - \sin x}{x^2}"),
        (r"Final answer: 3 mol. Checking with the mass balance confirms $\boxed{3\ \text{mol}}$.", r"3\ \text{mol}"),
        ("No final value is reached here.", None),
        (r"We find $\boxed{h = 7.35\text{ m}}$." + "\n\n**Final answer:** $h = 7.35$ m", "h = 7.35 m"),
    ]
):
    case("reference_extractor", f"rule{i:02d}", text, truth, reader="final_answer")

# --- classifier -------------------------------------------------------------------------------------------------------

for i, (text, truth, finish) in enumerate(
    [
        ('{"subject": "physics", "level": "undergraduate"}', ("physics", "undergraduate"), "stop"),
        ('{"subject": "Physics", "level": "Undergraduate"}', ("physics", "undergraduate"), "stop"),
        ('```json\n{"subject": "chemistry", "level": "graduate"}\n```', ("chemistry", "graduate"), "stop"),
        ('Based on the title and the first pages:\n{"subject": "biology", "level": "undergraduate"}', ("biology", "undergraduate"), "stop"),
        ('{"Subject": "math", "Level": "research"}', ("math", "research"), "stop"),
        ('{"subject": "medicine", "level": "graduate", "reasoning": "a pharmacology course for medical students"}', ("medicine", "graduate"), "stop"),
        ('{"subject": "computer science", "level": "undergraduate"}', ("cs", "undergraduate"), "stop"),
        ('{"subject": "economics", "level": "high school"}', ("economics", "high_school"), "stop"),
        ('{"subject": "cs", "level": "undergraduate",}', ("cs", "undergraduate"), "stop"),
        ('{"subject": "physics", "level": "undergraduate"}\n\nThe book is an introductory mechanics course.', ("physics", "undergraduate"), "stop"),
        ('{"subject": "history", "level": "undergraduate"}', UNREADABLE, "stop"),
        ('{"subject": "physics", "lev', UNREADABLE, "length"),
    ]
):
    case("classifier", f"c{i:02d}", text, truth, finish)

# --- distiller, annotator, answerer, student (free text) ---------------------------------------------------------

DISTILLED = "Step 1: the deceleration is a = v²/(2d) = 400/80 = 5 m/s².\nStep 2: F = ma = 1500 × 5 = 7500 N.\n\\boxed{7500\\ \\text{N}}"
case("distiller", "clean", DISTILLED, DISTILLED)
case("distiller", "surrounding-space", "\n\n" + DISTILLED + "\n", DISTILLED)
case("distiller", "cut", DISTILLED[:60], CUT, "length")
case("distiller", "cut-mid-latex", "Step 1: write $v^2 = v_0^2 - 2gh$.\nStep 2: so $h = \\frac{v_0^2}", CUT, "length")
case("distiller", "unicode", "Step 1: ΔG° = −RT ln K.\nStep 2: ΔG° = −8.314 × 298 × ln 10 = −5.70 kJ/mol.\n\\boxed{-5.70\\ \\text{kJ/mol}}", "Step 1: ΔG° = −RT ln K.\nStep 2: ΔG° = −8.314 × 298 × ln 10 = −5.70 kJ/mol.\n\\boxed{-5.70\\ \\text{kJ/mol}}")
case("distiller", "empty", "   ", UNREADABLE)

ANNOTATION = "Given: m = 2 kg, a = 3 m/s². Asked: the net force.\nStep 1: Newton's second law, F = ma.\nStep 2: F = 2 × 3 = 6 N.\n\\boxed{6\\ \\text{N}}"
case("annotator", "clean", ANNOTATION, ANNOTATION)
case("annotator", "cut", ANNOTATION[:70], CUT, "length")
case("annotator", "trailing-space", ANNOTATION + "\n\n", ANNOTATION)
case("annotator", "cut-after-box", ANNOTATION + "\n\nCheck: the units are kg·m/s² = N, and", CUT, "length")

case("answerer", "clean", "Step 1: set up the energy balance.\nStep 2: solve for v.\n\\boxed{12 m/s}", "Step 1: set up the energy balance.\nStep 2: solve for v.\n\\boxed{12 m/s}")
case("answerer", "long-cut", "Step 1: " + "expand the series term by term; " * 20, "Step 1: " + "expand the series term by term; " * 20, "length")
case("answerer", "unicode", "Δx·Δp ≥ ħ/2, so Δp ≥ 5.3 × 10⁻²⁵ kg·m/s.", "Δx·Δp ≥ ħ/2, so Δp ≥ 5.3 × 10⁻²⁵ kg·m/s.")
case("student", "boxed", "The speed is v = √(2gh) = √(2 × 9.8 × 5) = 9.9 m/s.\n\\boxed{9.9 m/s}", "The speed is v = √(2gh) = √(2 × 9.8 × 5) = 9.9 m/s.\n\\boxed{9.9 m/s}")
case("student", "no-box", "I think it is about 10 m/s.", "I think it is about 10 m/s.")
case("student", "cut", "Let me work through this. First, the energy", "Let me work through this. First, the energy", "length")

# --- ocr (olmOCR's own format) -------------------------------------------------------------------------------------

_FRONT = "---\nprimary_language: en\nis_rotation_valid: True\nrotation_correction: 0\nis_table: False\nis_diagram: False\n---\n"
case("ocr", "clean", _FRONT + "# Isothermal expansion\n\nExample 1.1. Two moles of an ideal gas expand.", "# Isothermal expansion\n\nExample 1.1. Two moles of an ideal gas expand.")
case("ocr", "latex", _FRONT + r"The work is $W = nRT \ln(V_2/V_1)$.", r"The work is $W = nRT \ln(V_2/V_1)$.")
case("ocr", "cut", _FRONT + "The first half of the page and then noth", CUT, "length")
case("ocr", "lowercase-booleans", _FRONT.replace("True", "true").replace("False", "false") + "Page text.", "Page text.")

# --- rules: text that drop rules read ------------------------------------------------------------------------------

for i, (text, truth) in enumerate(
    [
        ("A point source of light is placed 20 cm in front of a converging lens of focal length 15 cm. Where is the image?", "legit"),
        ("In a flow network, the source s and the sink t are joined by edges of capacity 3, 2 and 4. What is the maximum flow from the source to the sink?", "legit"),
        ("Write Python source code for a function that returns the n-th Fibonacci number iteratively.", "legit"),
        ("State the text of Gauss's divergence theorem and use it to find the flux of F = (x, y, z) through the unit sphere.", "legit"),
        ("The passage of a current of 2.0 A for 965 s through a CuSO₄ solution deposits how much copper?", "legit"),
        ("Explain how the Document Object Model represents an HTML document as a tree.", "legit"),
        ("Encrypt this text with a Caesar shift of 3: ATTACK AT DAWN.", "legit"),
        ("An emf source of 12 V with internal resistance 0.5 Ω drives a 5.5 Ω load. Find the terminal voltage.", "legit"),
        ("Find the Fourier transform of a Gaussian source term in the heat equation.", "legit"),
        ("According to the passage, what causes the seasons?", "reference"),
        ("Using the provided context, explain why the reaction is exothermic.", "reference"),
        ("As described in the given excerpt, how does the enzyme bind its substrate?", "reference"),
        ("The textbook states that the reaction is first order. What is its half-life if k = 0.1 s⁻¹?", "reference"),
        ("Based on the text above, what is the main function of the mitochondria?", "reference"),
        ("According to the author, what limits the growth of the population?", "reference"),
    ]
):
    case("rules", f"meta{i:02d}", text, truth, reader="meta")

for i, (text, truth) in enumerate(
    [
        ("A table 1.25 m high stands on a level floor. A ball rolls off its edge at 2.0 m/s. Where does it land?", "legit"),
        ("Two parallel plates 2.0 cm apart are held at a potential difference of 100 V. Find the field between them.", "legit"),
        ("Solve the equation 2.5x - 1 = 4 for x.", "legit"),
        ("A particle moves along a figure-8 curve given by x = sin t, y = sin 2t. Find its speed at t = 0.", "legit"),
        ("Is the graph 3-colorable if it contains a K4 subgraph?", "legit"),
        ("Solve the system x + y = 3 (1) and x - y = 1 (2): adding equation (1) and equation (2), what is x?", "legit"),
        ("Table salt has a molar mass of 58.44 g/mol. How many moles are in 100 g?", "legit"),
        ("A chart 2 m wide is pinned to a wall. What is its area if it is 1.5 m tall?", "legit"),
        ("Using equation (8.75), find the terminal velocity v.", "reference"),
        ("From Fig. 4-16, read off the slope of the velocity-time graph.", "reference"),
        ("See Table 2.1 for the values and compute the mean.", "reference"),
        ("As shown in the figure, a block slides down the incline. Find its acceleration.", "reference"),
        ("Refer to Figure 3 and determine the current in each branch.", "reference"),
        ("Apply Eq. 3.12 to find the pressure at depth h.", "reference"),
        ("Using the data in the diagram, find the tension in each rope.", "reference"),
    ]
):
    case("rules", f"material{i:02d}", text, truth, reader="material")


def by_role() -> dict[str, list[Case]]:
    grouped: dict[str, list[Case]] = {role: [] for role in ROLES}
    for item in CASES:
        grouped[item.role].append(item)
    return grouped


# --- written after the parsers, to check they were not fitted to the cases above ------------------------------------

OSMOSIS = (
    "A solution of 0.10 mol/L glucose is at 310 K. What is its osmotic pressure (R = 0.0821 L·atm/(mol·K))?",
    "π = cRT = 0.10 × 0.0821 × 310 = 2.5 atm.",
)
KIRCHHOFF = (
    r"Three resistors $R_1 = 2\,\Omega$, $R_2 = 3\,\Omega$ and $R_3 = 6\,\Omega$ are connected in parallel. What is the equivalent resistance?",
    r"$\frac{1}{R} = \frac{1}{2} + \frac{1}{3} + \frac{1}{6} = 1$, so $\boxed{R = 1\,\Omega}$.",
)
LIMIT = (r"Evaluate $\lim_{x \to 0} \frac{\sin 3x}{x}$.", r"$\lim_{x\to 0} \frac{\sin 3x}{x} = 3 \lim_{x \to 0}\frac{\sin 3x}{3x} = \boxed{3}$.")
GDP = ("Nominal GDP is $600 billion and the GDP deflator is 120. What is real GDP?", "Real GDP = nominal GDP / (deflator/100) = 600/1.2 = $500 billion.")

case(
    "extractor",
    "h-deepseek-explained-json",
    "I identified two problems with complete solutions.\n\n```json\n{\n  \"qa_pairs\": [\n    {\n      \"question\": \"%s\",\n      \"answer\": \"%s\"\n    },\n    {\n      \"question\": \"%s\",\n      \"answer\": \"%s\"\n    }\n  ]\n}\n```\n\n### Explanation\n1. The first is Example 4.2.\n2. The second is the worked part of Exercise 7." % (*OSMOSIS, *GDP),
    (OSMOSIS, GDP),
)
case("extractor", "h-single-backslash-cut", cut_inside(single_backslashes(as_json([KIRCHHOFF, LIMIT], indent=2)), r"3 \lim", 6), (KIRCHHOFF,), "length")
case("extractor", "h-pairs-key-lowercase-solution", json.dumps({"pairs": [{"problem": LIMIT[0], "solution": LIMIT[1]}]}, ensure_ascii=False), (LIMIT,))
case(
    "extractor",
    "h-numbered-markdown-bold-q",
    f"1. **Q:** {GDP[0]}\n   **A:** {GDP[1]}\n\n2. **Q:** {OSMOSIS[0]}\n   **A:** {OSMOSIS[1]}",
    (GDP, OSMOSIS),
)
case("extractor", "h-tagged-numbered-tags", f"<question_1>{KIRCHHOFF[0]}</question_1>\n<answer_1>{KIRCHHOFF[1]}</answer_1>", (KIRCHHOFF,))
case("extractor", "h-json-then-retraction", as_json([GDP]) + "\n\n(The definition of GDP in the excerpt is not a question, so I did not include it.)", (GDP,))
case("extractor", "h-none-sentence", "After reviewing the excerpt, I found no QA pairs that satisfy the high standard.", ())
case("refiner", "h-preamble-keys-latex", "Sure, here you go:\n{\n  \"Question\": \"%s\",\n  \"Answer\": \"%s\"\n}" % (KIRCHHOFF[0], KIRCHHOFF[1]), KIRCHHOFF)
case("refiner", "h-markdown-bold-labels-newlines", f"**Question**\n{LIMIT[0]}\n\n**Answer**\n{LIMIT[1]}", LIMIT)
case("reasoning_checker", "h-verdict-bold-yes", "**Verdict: Yes** — each step follows from the previous one.", "yes")
case("reasoning_checker", "h-no-json-trailing", 'No.\n\n{"verdict": "no"}', "no")
case("reasoning_checker", "h-lowercase-json-space", '{ "verdict" : "YES" }', "yes")
case("judge", "h-different-then-json", "The training item asks for a molar mass while the benchmark asks for a boiling point; these are different problems.\n\n```json\n{\"verdict\": \"no\"}\n```", "no")
case("judge", "h-same-problem-renamed", "Yes. Only the names changed (Alice/Bob) - it's the same problem.", "yes")
case("judge", "h-cut-json-complete", '{"verdict": "yes", "reason": "the two differ only in the', "yes", "length")
case("filter", "h-json-caps-bools", '{"self_contradictory": FALSE, "missing_material": FALSE, "answer_valid": TRUE}', (False, False, True))
case("filter", "h-fenced-extra-comment", '```json\n{\n  "self_contradictory": false,\n  "missing_material": true,\n  "answer_valid": true,\n  "comment": "the question cites Table 3"\n}\n```', (False, True, True))
case("grader", "h-score-in-markdown-header", "### Assessment\nThe final value matches.\n\n### Score\n9", 9)
case("grader", "h-json-score-float-string", '{"reasoning": "partly right", "score": "5.0"}', 5)
case("grader", "h-rated", "Rating: 3/10. Only the setup is right.", 3)
case("reference_extractor", "h-model-dollar", '{"reference_answer": "$3$"}', "3")
case("reference_extractor", "h-model-key-answer", '{"answer": "500 billion dollars"}', "500 billion dollars")
case("reference_extractor", "h-rule-final-bold-boxed", r"Thus the resistance is 1 Ω." + "\n\n" + r"**Final Answer:** $\boxed{1\,\Omega}$", r"1\,\Omega")
case("classifier", "h-level-phd", '{"subject": "Mathematics", "level": "Graduate"}', ("math", "graduate"))
case("rules", "h-meta-legit-source-voltage", "A voltage source of 9 V is connected to a 3 Ω resistor. What current flows?", "legit", reader="meta")
case("rules", "h-meta-legit-text-file", "Write a program that counts the words in a text file.", "legit", reader="meta")
case("rules", "h-material-legit-figure-of-merit", "The figure of merit ZT of a thermoelectric is 1.2 at 300 K. What does ZT = 1.2 imply?", "legit", reader="material")
case("rules", "h-material-legit-table-3-by-3", "A table 3 by 4 grid has how many cells?", "legit", reader="material")
case("rules", "h-material-ref-table-lower", "Using the values in table 4.3, compute the mean density.", "reference", reader="material")
case("rules", "h-meta-ref-in-this-passage", "In this passage, why does the author call the cell a factory?", "reference", reader="meta")
