-- Pages per extraction path (PDF text layer or the olmOCR vision model) and outcome.
SELECT method, status, reason, count(*) AS pages, count(DISTINCT book_id) AS books, sum(char_count) AS characters
FROM pages
GROUP BY method, status, reason
ORDER BY pages DESC
