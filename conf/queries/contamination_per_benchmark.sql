-- Per benchmark: candidate pairs judged, training questions judged the same problem as one of its items, verdicts.
SELECT benchmark,
       count(*) AS candidate_pairs,
       count(DISTINCT CASE WHEN verdict = 'yes' THEN qa_id END) AS contaminated_questions,
       count(DISTINCT CASE WHEN verdict = 'yes' THEN item_id END) AS items_matched,
       sum(CASE WHEN verdict = 'unparsed' THEN 1 ELSE 0 END) AS unparsed_verdicts,
       sum(CASE WHEN verdict = 'skipped' THEN 1 ELSE 0 END) AS skipped_pairs,
       round(avg(CASE WHEN verdict = 'yes' THEN cosine END), 3) AS mean_cosine_of_matches
FROM contamination
GROUP BY benchmark
ORDER BY contaminated_questions DESC, benchmark
