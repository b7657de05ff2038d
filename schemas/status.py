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
REASON_NOT_PDF = "not_pdf"
REASON_CORRUPT_PDF = "corrupt_pdf"
REASON_ENCRYPTED_PDF = "encrypted_pdf"
REASON_ZERO_PAGES = "zero_pages"
REASON_TOO_LARGE = "file_too_large"
REASON_UNREADABLE = "unreadable_file"

# dedup
REASON_NEAR_DUPLICATE = "near_duplicate"  # exact Jaccard of word n-grams to the cluster's keeper, see jobs/dedup.py
REASON_EXACT_DUPLICATE = "exact_duplicate"  # under n words: the same normalised text as the keeper
REASON_EMPTY_QUESTION = "empty_question"  # no word characters at all
