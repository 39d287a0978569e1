-- What a visitor can never learn: agent-only notes, who the conversation is assigned to, why the
-- bot handed it over. Searched for in every relation and through every function a visitor can reach.
SET ROLE campfire_test_client;
CALL t.act_as('agent_a');
SELECT (campfire.set_conversation_status((SELECT conversation_id FROM t.sessions WHERE name = 'visitor_b'), 'bot')).status;
SELECT (campfire.request_handover((SELECT conversation_id FROM t.sessions WHERE name = 'visitor_b'), 'SECRET-REASON')).status;
SELECT (campfire.claim_conversation((SELECT conversation_id FROM t.sessions WHERE name = 'visitor_b'))).status;
SELECT seq, message_type FROM campfire.send_message((SELECT conversation_id FROM t.sessions WHERE name = 'visitor_b'), 'SECRET-NOTE about B', message_type => 'note');
-- Agents see the note in their summary, and the assignment.
SELECT last_message_preview, assigned_to, handover_reason FROM campfire.realtime_conversations
WHERE id = (SELECT conversation_id FROM t.sessions WHERE name = 'visitor_b');

-- Every row of every relation the caller may read, as text, that contains `needle`.
RESET ROLE;
CREATE FUNCTION t.rows_mentioning(needle text) RETURNS TABLE (relation text, matches bigint) LANGUAGE plpgsql AS $$
DECLARE
    rel regclass;
BEGIN
    FOR rel IN SELECT c.oid FROM pg_class c
               WHERE c.relnamespace = 'campfire'::regnamespace AND c.relkind IN ('r', 'v')
                 AND has_table_privilege(c.oid, 'SELECT') ORDER BY c.relname
    LOOP
        relation := rel::text;
        EXECUTE format('SELECT count(*) FROM %s r WHERE r::text LIKE %L', rel, '%' || needle || '%') INTO matches;
        RETURN NEXT;
    END LOOP;
END
$$;
GRANT EXECUTE ON ALL ROUTINES IN SCHEMA t TO PUBLIC;
SET ROLE campfire_test_client;

CALL t.act_as('visitor_b');
SELECT n.needle, string_agg(r.relation, ', ') FILTER (WHERE r.matches > 0) AS found_in,
       count(*) FILTER (WHERE r.matches = 0) AS relations_searched_in_vain
FROM unnest(ARRAY['SECRET-NOTE', 'SECRET-REASON', 'a0000000-0000-4000-8000-0000000000a2']) AS n(needle)
CROSS JOIN LATERAL t.rows_mentioning(n.needle) r GROUP BY n.needle ORDER BY n.needle;
-- ...and through the functions a visitor calls.
SELECT count(*) AS notes_in_history FROM campfire.history((SELECT conversation_id FROM t.sessions WHERE name = 'visitor_b')) h
WHERE h::text LIKE '%SECRET%';
SELECT count(*) AS events_mentioning_secrets FROM campfire.events_since(0) e
WHERE e.payload::text LIKE '%SECRET%' OR e.payload::text LIKE '%a0000000-0000-4000-8000-0000000000a2%';
-- The visitor's own summary is its last visible message, and its watermark never counts the note.
SELECT status, last_message_seq, last_message_preview, last_message_sender_type FROM campfire.widget_conversations;
SELECT campfire.mark_read((SELECT conversation_id FROM t.sessions WHERE name = 'visitor_b')) AS visitor_watermark;
SELECT campfire.mark_read((SELECT conversation_id FROM t.sessions WHERE name = 'visitor_b'), 99) AS capped_at_visible;
-- The view shows a visitor nothing of other visitors, and members nothing at all.
CALL t.act_as('visitor_a');
SELECT count(*) AS erased_visitor_sees FROM campfire.widget_conversations;
CALL t.act_as('agent_a');
SELECT count(*) AS agent_sees_in_widget_view FROM campfire.widget_conversations;

-- No existence oracle: writing into a conversation the caller may not see gets the same answer
-- whether or not it exists (the ids differ only in the messages' own text).
RESET ROLE;
CREATE FUNCTION t.same_answer(template text, existing uuid, missing uuid) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    ids constant text := '<[^>]*>|[0-9a-f]{8}-[0-9a-f-]{27}';
    for_existing text := regexp_replace(t.try(format(template, existing)), ids, '<id>', 'g');
    for_missing text := regexp_replace(t.try(format(template, missing)), ids, '<id>', 'g');
BEGIN
    RETURN CASE WHEN for_existing = for_missing THEN 'same: ' || for_existing
                ELSE format('DIFFERENT: %s / %s', for_existing, for_missing) END;
END
$$;
GRANT EXECUTE ON ALL ROUTINES IN SCHEMA t TO PUBLIC;
SET ROLE campfire_test_client;
CALL t.act_as('agent_a');
SELECT t.same_answer($$INSERT INTO campfire.messages (conversation_id, organization_id, content, sender_type)
                       VALUES (%L, 'bbbbbbbb-0000-4000-8000-00000000000b', 'probe', 'agent')$$,
                     (SELECT conversation_id FROM t.sessions WHERE name = 'visitor_orgb'), gen_random_uuid()) AS foreign_org_insert;
SELECT t.same_answer($$INSERT INTO campfire.messages (conversation_id, organization_id, content, sender_type, client_message_id)
                       VALUES (%L, 'bbbbbbbb-0000-4000-8000-00000000000b', 'probe', 'agent', 'probe-1')$$,
                     (SELECT conversation_id FROM t.sessions WHERE name = 'visitor_orgb'), gen_random_uuid()) AS foreign_org_retry_insert;
SELECT t.same_answer($$INSERT INTO campfire.messages (conversation_id, organization_id, content, sender_type)
                       VALUES (%L, 'aaaaaaaa-0000-4000-8000-00000000000a', 'probe', 'agent')$$,
                     (SELECT conversation_id FROM t.sessions WHERE name = 'visitor_orgb'), gen_random_uuid()) AS foreign_conversation_own_org;
SELECT t.same_answer($$SELECT campfire.send_message(%L, 'probe')$$,
                     (SELECT conversation_id FROM t.sessions WHERE name = 'visitor_orgb'), gen_random_uuid()) AS send_message;
SELECT t.same_answer($$SELECT campfire.mark_read(%L)$$,
                     (SELECT conversation_id FROM t.sessions WHERE name = 'visitor_orgb'), gen_random_uuid()) AS mark_read;
SELECT t.same_answer($$SELECT campfire.revoke_widget_session(%L)$$,
                     (SELECT widget_session_id FROM t.sessions WHERE name = 'visitor_orgb'), gen_random_uuid()) AS revoke_session;
SELECT t.same_answer($$SELECT campfire.claim_conversation(%L)$$,
                     (SELECT conversation_id FROM t.sessions WHERE name = 'visitor_orgb'), gen_random_uuid()) AS claim;
CALL t.act_as('visitor_b');
SELECT t.same_answer($$INSERT INTO campfire.messages (conversation_id, organization_id, content, sender_type)
                       VALUES (%L, 'aaaaaaaa-0000-4000-8000-00000000000a', 'probe', 'customer')$$,
                     (SELECT conversation_id FROM t.sessions WHERE name = 'hijack'), gen_random_uuid()) AS visitor_insert;
SELECT t.same_answer($$INSERT INTO campfire.conversation_reads (organization_id, conversation_id, reader_type, reader_id, last_read_seq)
                       VALUES ('aaaaaaaa-0000-4000-8000-00000000000a', %L, 'customer', campfire.current_widget_session_id(), 1)$$,
                     (SELECT conversation_id FROM t.sessions WHERE name = 'hijack'), gen_random_uuid()) AS visitor_read_receipt;
-- Direct inserts without an organization still name what is missing.
CALL t.act_as('agent_a');
SELECT t.try(format($$INSERT INTO campfire.messages (conversation_id, content, sender_type) VALUES (%L, 'x', 'agent')$$,
                    (SELECT conversation_id FROM t.sessions WHERE name = 'visitor_b'))) AS without_organization;
RESET ROLE;
CALL t.act_as('nobody');
