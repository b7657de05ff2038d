"""The status/reason vocabulary shared by every table.

Every stage keeps each input row in its output with a coarse `status` (what later stages filter on) and a
fine-grained `reason` code (what the funnel and the failure reports group by), plus a free-text `detail`.
"""

KEPT = "kept"  # the row flows on to the next stage
DROPPED = "dropped"  # removed on purpose by a rule (copyright, filter, dedup, contamination, ...)
FAILED = "failed"  # could not be processed (bad input, engine error, unparseable output)

STATUSES = (KEPT, DROPPED, FAILED)

# reason codes, grouped by the stage that sets them
REASON_OK = "ok"

# ingest
REASON_RIGHTS_PATTERN = "copyright_rights_pattern"
REASON_LICENSE_NOT_ALLOWED = "copyright_license_not_allowed"
REASON_PERMISSIONS = "copyright_pdf_permissions"
REASON_NO_RIGHTS_METADATA = "no_rights_metadata"  # no licence/rights/access anywhere: ingest.copyright.no_metadata says
REASON_NOT_PDF = "not_pdf"
REASON_CORRUPT_PDF = "corrupt_pdf"
REASON_ENCRYPTED_PDF = "encrypted_pdf"
REASON_ZERO_PAGES = "zero_pages"
REASON_TOO_LARGE = "file_too_large"
REASON_UNREADABLE = "unreadable_file"

# ocr (one row per page)
REASON_BLANK_PAGE = "blank_page"  # dropped: no text layer and no ink (never sent to a model), or the model read none
REASON_TEXT_LAYER_POOR = "text_layer_poor"  # ocr.method=text_layer and the page's text layer fails the quality checks
REASON_PDF_UNREADABLE = "pdf_unreadable"  # the book's file could not be opened again to read its pages
REASON_OCR_RENDER_ERROR = "ocr_render_error"  # the page could not be rendered to an image
REASON_OCR_ENGINE_ERROR = "ocr_engine_error"  # the OCR model call failed (or the model cannot take images)
REASON_OCR_NO_VISION_MODEL = "ocr_no_vision_model"  # the ocr role has the text-only smoke model: no call is made
REASON_OCR_UNPARSED = "ocr_unparsed"  # the answer is not olmOCR's format (front matter + natural text)
REASON_OCR_TRUNCATED = "ocr_truncated"  # the answer was cut off at the role's max_tokens
REASON_OCR_ROTATION_UNRESOLVED = "ocr_rotation_unresolved"  # still "rotation invalid" after ocr.rotation_retries

# classify (one row per book)
REASON_LEVEL_NOT_KEPT = "level_not_kept"  # level not in classify.keep_levels (university level and above by default)
REASON_SUBJECT_NOT_KEPT = "subject_not_kept"  # subject not in classify.keep_subjects
REASON_CLASSIFY_UNPARSED = "classify_unparsed"  # the answer is not JSON with a known subject and level
REASON_CLASSIFY_ENGINE_ERROR = "classify_engine_error"
REASON_CLASSIFY_PROMPT_ERROR = "classify_prompt_error"

# chunk (one row per chunk; one failed row for a book that gave none)
REASON_NO_TEXT = "no_text"  # a kept book without any kept page text
REASON_CHUNK_ERROR = "chunk_error"  # the tokenizer failed on the book's text

# dedup
REASON_NEAR_DUPLICATE = "near_duplicate"  # exact Jaccard of word n-grams to the cluster's keeper, see jobs/stages/dedup.py
REASON_EXACT_DUPLICATE = "exact_duplicate"  # under n words: the same normalised text as the keeper
REASON_EMPTY_QUESTION = "empty_question"  # no word characters at all

# the status of an llm_calls row: the engine gave outputs, or an error
CALL_OK = "ok"
CALL_ERROR = "error"

# the llm_status of every row that went through an LLM role (megascience.jobs.platform.llm): answered and read, answer unreadable, call
# failed, prompt could not be built
LLM_OK = "ok"
LLM_PARSE_ERROR = "parse_error"
LLM_ENGINE_ERROR = "engine_error"
LLM_PROMPT_ERROR = "prompt_error"

# any LLM stage: a failed call or answer is a failed row with its llm_status as reason, tried again on the next run
REASON_PARSE_ERROR = LLM_PARSE_ERROR
REASON_ENGINE_ERROR = LLM_ENGINE_ERROR
REASON_PROMPT_ERROR = LLM_PROMPT_ERROR
REASON_TRUNCATED = "truncated"  # the model was cut off at the role's max_tokens inside this answer: never kept

# extract
REASON_NO_QA_PAIRS = "no_qa_pairs"  # the model found no question meeting the standard in the chunk
REASON_MISSING_ANSWER = "missing_answer"  # a question the model gave no answer
REASON_SUPERSEDED = "superseded"  # a failed extraction that a later run answered
REASON_OUTPUT_CUT = "output_cut"  # still cut off after extract.continuation_rounds continuations: pairs past the cut missing

# refine
REASON_REFINE_EMPTY_FIELD = "refine_empty_field"
REASON_REFINE_META_TEXT = "refine_meta_text"  # the rewritten text talks about its source ("the passage", ...)

# filter
REASON_FILTER_SELF_CONTRADICTORY = "filter_self_contradictory"
REASON_FILTER_MISSING_MATERIAL = "filter_missing_material"  # a figure, table or numbered equation that is not given
REASON_FILTER_INVALID_ANSWER = "filter_invalid_answer"

# reference_answer
# kept with reference_answer null (the paper keeps every pair): no \boxed{}, no final-answer line, the model found none
REASON_NO_REFERENCE_ANSWER = "no_reference_answer"

# benchmarks (one row per benchmark item)
REASON_BENCHMARK_MISSING_FIELD = "benchmark_missing_field"  # a mapped field is absent, or the question/id is empty
REASON_BENCHMARK_UNREADABLE_RECORD = "benchmark_unreadable_record"  # e.g. a jsonl line that is not a JSON object
REASON_DUPLICATE_ITEM_ID = "duplicate_item_id"  # another item of the benchmark already holds this id

# ingest_external (external_qa: one row per record)
REASON_EXTERNAL_MISSING_FIELD = "external_missing_field"  # a mapped field is absent, or the question is empty
REASON_EXTERNAL_UNREADABLE_RECORD = "external_unreadable_record"  # e.g. a jsonl line that is not a JSON object
REASON_EXTERNAL_SOURCE_UNREADABLE = "external_source_unreadable"  # the whole source: no file, no `datasets`, hub error

# decontaminate (contamination: one row per (question, benchmark item) pair)
REASON_SAME_PROBLEM = "same_problem"  # verdict yes
REASON_DIFFERENT_PROBLEM = "different_problem"  # verdict no
REASON_BELOW_COSINE_FLOOR = "below_cosine_floor"  # verdict skipped: cosine under decontamination.cosine_floor
REASON_OUTSIDE_TOP_K = "outside_top_k"  # verdict skipped: not among the question's top_k over all benchmarks

# drop_contaminated (qa_decontaminated: one row per question)
REASON_CONTAMINATED = "contaminated"  # the judge found a benchmark item to be the same problem
REASON_JUDGE_ERROR = "judge_error"  # a judge call failed; tried again on the next run
REASON_ALL_UNPARSED = "all_unparsed"  # no judged pair has a readable verdict (decontamination.unparsed: exclude)
REASON_SOME_UNPARSED = "some_unparsed"  # some verdicts unreadable, none yes (decontamination.unparsed: exclude)

# select (selection_scores: one row per (dataset, method, question))
REASON_TOO_EASY = "too_easy"  # difficulty: mean grade above select.difficulty.max_mean
REASON_TOO_HARD = "too_hard"  # difficulty: mean grade below select.difficulty.min_mean (likely a noisy question)
REASON_GRADES_UNPARSED = "grades_unparsed"  # some grades unreadable and select.difficulty.unparsed_grades is fail
REASON_TOO_FEW_GRADES = "too_few_grades"  # fewer readable grades than select.difficulty.min_grades
REASON_EMPTY_ANSWER = "empty_answer"  # length: the answerer gave no text
REASON_BELOW_QUOTA = "below_quota"  # outside the dataset's quota under this method
REASON_METHOD_NOT_CHOSEN = "method_not_chosen"  # selected under a method the dataset is not configured with
REASON_UNGRADABLE = "ungradable"  # difficulty: no short reference answer in the dataset nor readable from its response

# annotate (external_annotated)
REASON_ANSWER_TOO_LONG = "answer_too_long"  # over annotate.max_answer_tokens, or cut off at the role's max_tokens
