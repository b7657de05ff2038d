-- Kept question/answer pairs per subject at each curation step (the paper's Table 2), with the high-standard share.
WITH pairs AS (
  SELECT subject, standard, qa_id FROM qa_extracted WHERE status = 'kept' AND question IS NOT NULL
), dedup AS (
  SELECT subject, qa_id FROM qa_clusters WHERE status = 'kept'
), filtered AS (
  SELECT subject, qa_id FROM qa_filtered WHERE status = 'kept'
), decontaminated AS (
  SELECT subject, qa_id FROM qa_decontaminated WHERE status = 'kept'
), published AS (
  SELECT subject, qa_id FROM textbook_reasoning
)
SELECT p.subject,
       count(DISTINCT p.qa_id) AS pairs,
       count(DISTINCT d.qa_id) AS after_dedup,
       count(DISTINCT f.qa_id) AS after_filter,
       count(DISTINCT c.qa_id) AS after_decontamination,
       count(DISTINCT g.qa_id) AS published,
       round(100 * count(DISTINCT CASE WHEN p.standard = 'high' THEN p.qa_id END) / count(DISTINCT p.qa_id), 1) AS high_pct
FROM pairs p
LEFT JOIN dedup d ON d.qa_id = p.qa_id
LEFT JOIN filtered f ON f.qa_id = p.qa_id
LEFT JOIN decontaminated c ON c.qa_id = p.qa_id
LEFT JOIN published g ON g.qa_id = p.qa_id
GROUP BY p.subject
ORDER BY pairs DESC
