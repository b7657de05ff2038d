-- One published pair's full lineage back to its PDF pages: the gold row, the extracted pair and the call that
-- made it, the chunk, the book file, and the pages the chunk spans. Parameter :qa_id.
SELECT g.qa_id,
       g.subject,
       g.standard,
       g.question AS published_question,
       x.question AS extracted_question,
       x.model AS extractor_model,
       x.call_id AS extraction_call,
       c.chunk_id,
       c.chunk_index,
       b.file_name,
       b.source_uri,
       p.page_number,
       p.method AS page_method,
       substr(p.text, 1, 120) AS page_text_start
FROM textbook_reasoning g
JOIN qa_extracted x ON x.qa_id = g.qa_id
JOIN chunks c ON c.chunk_id = g.chunk_id
JOIN books b ON b.book_id = g.book_id
JOIN pages p ON p.book_id = g.book_id AND p.page_number BETWEEN c.first_page AND c.last_page
WHERE g.qa_id = :qa_id
ORDER BY p.page_number
