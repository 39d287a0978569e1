-- Erasing a visitor: everything stored about them goes, including the events that carried it.
SET ROLE campfire_test_client;
CALL t.act_as('agent_a');
SELECT t.try($$SELECT campfire.erase_visitor('aaaaaaaa-0000-4000-8000-00000000000a', 'visitor-a')$$) AS agent_erases;
CALL t.act_as('agent_b');
SELECT t.try($$SELECT campfire.erase_visitor('aaaaaaaa-0000-4000-8000-00000000000a', 'visitor-a')$$) AS other_org_erases;
CALL t.act_as('admin_a');
SELECT (r ->> 'conversations')::int AS conversations, (r ->> 'messages')::int > 500 AS messages,
       (r ->> 'events')::int > 1000 AS events, (r ->> 'sessions')::int AS sessions
FROM campfire.erase_visitor('aaaaaaaa-0000-4000-8000-00000000000a', 'visitor-a') r;
RESET ROLE;
SELECT count(*) AS sessions_left FROM campfire.widget_sessions WHERE visitor_id = 'visitor-a';
SELECT count(*) AS messages_left FROM campfire.messages WHERE conversation_id = (SELECT conversation_id FROM t.sessions WHERE name = 'visitor_a');
SELECT e.event, (e.payload -> 'conversation') IS NOT NULL AS carries_data FROM campfire.events e
WHERE e.conversation_id = (SELECT conversation_id FROM t.sessions WHERE name = 'visitor_a');
SELECT count(*) AS events_mentioning_visitor FROM campfire.events WHERE payload::text LIKE '%va@example.com%' OR payload::text LIKE '%Hello from A%';
-- Other visitors are untouched.
SELECT count(*) > 0 AS visitor_b_kept FROM campfire.messages WHERE conversation_id = (SELECT conversation_id FROM t.sessions WHERE name = 'visitor_b');

-- Retention: pruning records how far the log now starts, so resumers behind it can be told.
CALL t.act_as('service');
SELECT campfire.log_tail() AS tail_before;
SELECT campfire.log_head() AS head \gset
SELECT campfire.prune_events(interval '0 seconds') > 0 AS pruned;
SELECT campfire.log_tail() = :head AS pruned_through_the_head, count(*) AS events_left FROM campfire.events;
SET ROLE campfire_test_client;
CALL t.act_as('admin_a');
SELECT t.try($$SELECT campfire.prune_events(interval '0 seconds')$$) AS admin_prunes;
SELECT t.try($$SELECT campfire.log_tail()$$) AS client_reads_tail;
RESET ROLE;
CALL t.act_as('nobody');
