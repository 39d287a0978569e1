-- Widget sessions: per-session secrets, idempotent start, the claim window, revocation.
SET ROLE campfire_test_client;

-- The same visitor twice (double click, two tabs): same session, conversation and secret.
CREATE TEMP TABLE first_start AS SELECT * FROM campfire.start_widget_session('aaaaaaaa-0000-4000-8000-00000000000a', 'visitor-d');
CREATE TEMP TABLE second_start AS SELECT * FROM campfire.start_widget_session('aaaaaaaa-0000-4000-8000-00000000000a', 'visitor-d');
GRANT SELECT ON first_start, second_start TO PUBLIC;
SELECT f.conversation_id = s.conversation_id AS same_conversation,
       f.widget_session_id = s.widget_session_id AS same_session,
       f.session_secret = s.session_secret AS same_secret,
       f.session_secret LIKE 'cfws_%' AS secret_shape
FROM first_start f, second_start s;
-- Resuming with the secret works at any time; the secret is not the organization id.
SELECT r.conversation_id = f.conversation_id AS resumed
FROM first_start f, campfire.start_widget_session('aaaaaaaa-0000-4000-8000-00000000000a', 'visitor-d',
                                                  resume_secret => (SELECT session_secret FROM first_start)) r;
-- The relay exchanges a secret for claims (visitor_claims is the relay's alone).
SELECT t.try($$SELECT campfire.visitor_claims('x')$$) AS client_exchanges_secret;
SET ROLE campfire_test_relay;
SELECT c ->> 'role' AS role, (c ->> 'widget_session_id')::uuid = f.widget_session_id AS claims_name_the_session
FROM first_start f, campfire.visitor_claims(f.session_secret) c;

SET ROLE campfire_test_client;

-- Once the claim window (60 s) is over, the visitor id alone no longer opens the session.
RESET ROLE;
UPDATE campfire.widget_sessions SET created_at = now() - interval '2 minutes' WHERE visitor_id = 'visitor-d';
SET ROLE campfire_test_client;
SELECT t.try($$SELECT campfire.start_widget_session('aaaaaaaa-0000-4000-8000-00000000000a', 'visitor-d')$$) AS hijack_after_window;
SET ROLE campfire_test_relay;
SELECT t.try($$SELECT campfire.visitor_claims('cfws_00000000000040008000000000000000_AAAA')$$) AS forged_secret;
SELECT t.try($$SELECT campfire.visitor_claims('not even close')$$) AS garbage_secret;
SET ROLE campfire_test_client;
-- Another visitor's secret does not resume this one.
SELECT t.try(format($$SELECT campfire.start_widget_session('aaaaaaaa-0000-4000-8000-00000000000a', 'visitor-a', resume_secret => %L)$$,
                    (SELECT session_secret FROM first_start))) AS someone_elses_secret;

-- Bad input.
SELECT t.try($$SELECT campfire.start_widget_session(NULL, 'v')$$) AS no_org;
SELECT t.try($$SELECT campfire.start_widget_session('00000000-0000-4000-8000-000000000000', 'v')$$) AS unknown_org;
SELECT t.try($$SELECT campfire.start_widget_session('aaaaaaaa-0000-4000-8000-00000000000a', 'bad visitor; drop table x')$$) AS bad_visitor;
SELECT t.try($$SELECT campfire.start_widget_session('aaaaaaaa-0000-4000-8000-00000000000a', 'v', 'nope@')$$) AS bad_email;
SELECT t.try($$SELECT campfire.start_widget_session('aaaaaaaa-0000-4000-8000-00000000000a', 'v', NULL, repeat('n', 201))$$) AS long_name;

-- Revocation: the visitor may end its own session; the secret stops working at once.
RESET ROLE;
CALL t.act_as('nobody');
SELECT set_config('request.jwt.claims', jsonb_build_object('role', 'visitor', 'widget_session_id', widget_session_id)::text, false)
FROM first_start \gset
SET ROLE campfire_test_client;
SELECT count(*) AS conversations_visible_before_revocation FROM campfire.widget_conversations;
PREPARE session_answers AS
SELECT campfire.current_widget_session_id() IS NOT DISTINCT FROM (SELECT widget_session_id FROM first_start) AS own_session,
       cardinality(campfire.visitor_conversations()) AS conversations,
       campfire.may_insert_message('aaaaaaaa-0000-4000-8000-00000000000a', (SELECT conversation_id FROM first_start),
                                   'customer', 'text', NULL) AS may_send;
EXECUTE session_answers;
-- In one transaction, asked again and again (the helpers keep an answer only while nothing it
-- could see has changed, read_memo.rs): a revocation the transaction writes is seen by the next
-- question, its rollback to a savepoint by the one after, and within one statement the
-- questions after the revocation see it.
BEGIN;
EXECUTE session_answers;
SAVEPOINT before_revocation;
SELECT campfire.revoke_widget_session((SELECT widget_session_id FROM first_start)) AS revoked;
EXECUTE session_answers;
ROLLBACK TO SAVEPOINT before_revocation;
EXECUTE session_answers;
SELECT cardinality(campfire.visitor_conversations()) AS asked_before,
       campfire.revoke_widget_session((SELECT widget_session_id FROM first_start)) AS revoked,
       cardinality(campfire.visitor_conversations()) AS asked_after;
ROLLBACK;
SELECT campfire.revoke_widget_session((SELECT widget_session_id FROM first_start)) AS revoked;
SET ROLE campfire_test_relay;
SELECT t.try(format($$SELECT campfire.visitor_claims(%L)$$, (SELECT session_secret FROM first_start))) AS revoked_secret;
SET ROLE campfire_test_client;
SELECT count(*) AS conversations_visible_after_revocation FROM campfire.widget_conversations;
-- Nothing answers from the session as it was a statement ago: not its id, its conversations, nor
-- the insert rule for a message into its own conversation.
EXECUTE session_answers;
CALL t.act_as('visitor_a');
SELECT t.try(format($$SELECT campfire.revoke_widget_session(%L)$$, (SELECT widget_session_id FROM t.sessions WHERE name = 'visitor_orgb'))) AS revoke_foreign;
-- An outsider cannot revoke anyone's session.
CALL t.act_as('agent_b');
SELECT t.try(format($$SELECT campfire.revoke_widget_session(%L)$$, (SELECT widget_session_id FROM t.sessions WHERE name = 'visitor_a'))) AS revoke_other_org;
CALL t.act_as('nobody');
