-- The SQL API: each function, and each error with its SQLSTATE.
SET ROLE campfire_test_client;
\set conv_a '(SELECT conversation_id FROM t.sessions WHERE name = ''visitor_a'')'

-- send_message: validation -------------------------------------------------------------------------
CALL t.act_as('agent_a');
SELECT t.try(format($$SELECT campfire.send_message(%L, '')$$, :conv_a)) AS empty;
SELECT t.try(format($$SELECT campfire.send_message(%L, '   ')$$, :conv_a)) AS blank;
SELECT t.try(format($$SELECT campfire.send_message(%L, NULL)$$, :conv_a)) AS null_content;
SELECT t.try(format($$SELECT campfire.send_message(%L, repeat('x', 4001))$$, :conv_a)) AS too_long;
SELECT t.try(format($$SELECT campfire.send_message(%L, 'hi', sender_type => 'robot')$$, :conv_a)) AS bad_sender;
SELECT t.try(format($$SELECT campfire.send_message(%L, 'hi', sender_type => 'customer')$$, :conv_a)) AS agent_as_customer;
SELECT t.try(format($$SELECT campfire.send_message(%L, 'hi', message_type => 'poem')$$, :conv_a)) AS bad_type;
SELECT t.try(format($$SELECT campfire.send_message(%L, 'hi', sender_email => 'not-an-email')$$, :conv_a)) AS bad_email;
SELECT t.try(format($$SELECT campfire.send_message(%L, 'hi', client_message_id => 'has space')$$, :conv_a)) AS bad_client_id;
SELECT t.try($$SELECT campfire.send_message('00000000-0000-4000-8000-000000000000', 'hi')$$) AS unknown_conversation;
SELECT t.try($$SELECT campfire.send_message('not-a-uuid', 'hi')$$) AS malformed_id;
-- Exactly 4000 characters, multi-byte (12000 bytes): stored whole.
SELECT seq, length(content), octet_length(content)
FROM campfire.send_message(:conv_a, repeat('€', 3999) || '!');

-- send_message: idempotency ---------------------------------------------------------------------------
SELECT seq, content FROM campfire.send_message(:conv_a, 'once', client_message_id => 'retry-1');
SELECT seq, content FROM campfire.send_message(:conv_a, 'once', client_message_id => 'retry-1');
SELECT seq, content FROM campfire.send_message(:conv_a, 'once', client_message_id => 'retry-1');
SELECT count(*) AS stored FROM campfire.messages WHERE client_message_id = 'retry-1';
-- A retry as a plain INSERT is skipped too, without burning a sequence number.
RESET ROLE;
INSERT INTO campfire.messages (conversation_id, organization_id, content, sender_type, client_message_id)
VALUES (:conv_a, 'aaaaaaaa-0000-4000-8000-00000000000a', 'once', 'agent', 'retry-1');
SET ROLE campfire_test_client;
SELECT seq, content FROM campfire.send_message(:conv_a, 'next', client_message_id => 'retry-2');
-- Sequence numbers are gap-free per conversation.
SELECT count(*) AS messages, max(seq) AS max_seq, count(DISTINCT seq) AS distinct_seqs
FROM campfire.messages WHERE conversation_id = :conv_a;

-- The seeds' required column: a direct INSERT without organization_id is refused clearly.
RESET ROLE;
SELECT t.try(format($$INSERT INTO campfire.messages (conversation_id, content, sender_type) VALUES (%L, 'x', 'agent')$$, :conv_a)) AS no_org;
-- The table's own rules hold for a direct INSERT or UPDATE too, each refused naming its field;
-- the limits themselves are stored whole (and rolled back).
BEGIN;
\set direct 'INSERT INTO campfire.messages (conversation_id, organization_id, content, sender_type, sender_name, sender_email, message_type, status, client_message_id) SELECT conversation_id, organization_id'
SELECT rule, t.try(format(:'direct' || ', %s FROM t.sessions WHERE name = %L', v, 'visitor_a')) AS result
FROM (VALUES ('blank', $$' ', 'agent', NULL, NULL, 'text', 'sent', NULL$$),
             ('4001 characters', $$repeat('é', 4001), 'agent', NULL, NULL, 'text', 'sent', NULL$$),
             ('sender_type', $$'hi', 'robot', NULL, NULL, 'text', 'sent', NULL$$),
             ('201-character name', $$'hi', 'agent', repeat('n', 201), NULL, 'text', 'sent', NULL$$),
             ('321-character email', $$'hi', 'agent', NULL, repeat('e', 321), 'text', 'sent', NULL$$),
             ('message_type', $$'hi', 'agent', NULL, NULL, 'poem', 'sent', NULL$$),
             ('status', $$'hi', 'agent', NULL, NULL, 'text', 'lost', NULL$$),
             ('client_message_id', $$'hi', 'agent', NULL, NULL, 'text', 'sent', 'has space'$$),
             ('129-character client_message_id', $$'hi', 'agent', NULL, NULL, 'text', 'sent', repeat('c', 129)$$),
             ('customer note', $$'hi', 'customer', NULL, NULL, 'note', 'sent', NULL$$),
             ('limits', $$repeat('é', 4000), 'bot', repeat('ñ', 200), repeat('e', 320), 'event', 'failed', repeat('c', 128)$$))
     AS r(rule, v);
SELECT t.try(format($$UPDATE campfire.messages SET status = 'lost' WHERE conversation_id = %L$$, :conv_a)) AS update_status;
ROLLBACK;
SET ROLE campfire_test_client;

-- history -----------------------------------------------------------------------------------------------
SELECT seq, sender_type, left(content, 20) AS content FROM campfire.history(:conv_a) ORDER BY seq;
SELECT seq FROM campfire.history(:conv_a, before_seq => 4, max_rows => 2);
SELECT t.try(format($$SELECT campfire.history(%L, max_rows => 0)$$, :conv_a)) AS bad_limit;
CALL t.act_as('visitor_a');
SELECT seq, sender_type, message_type FROM campfire.history(:conv_a) WHERE message_type = 'note';
CALL t.act_as('visitor_b');
SELECT t.try(format($$SELECT campfire.history(%L)$$, :conv_a)) AS foreign_history;

-- mark_read: monotonic -------------------------------------------------------------------------------
CALL t.act_as('agent_b');
SELECT t.try(format($$SELECT campfire.mark_read(%L)$$, :conv_a)) AS foreign_read;
CALL t.act_as('admin_a');
SELECT campfire.mark_read(:conv_a, 2) AS admin_read_2;
SELECT campfire.mark_read(:conv_a, 1) AS admin_read_1_keeps_2;
SELECT campfire.mark_read(:conv_a, 999) AS admin_read_past_end_clamps;
SELECT t.try(format($$SELECT campfire.mark_read(%L, -1)$$, :conv_a)) AS negative;

-- availability --------------------------------------------------------------------------------------
CALL t.act_as('agent_a');
SELECT availability FROM campfire.set_availability('aaaaaaaa-0000-4000-8000-00000000000a', 'online');
SELECT t.try($$SELECT campfire.set_availability('aaaaaaaa-0000-4000-8000-00000000000a', 'sleeping')$$) AS bad_availability;
SELECT t.try($$SELECT campfire.set_availability('bbbbbbbb-0000-4000-8000-00000000000b', 'online')$$) AS foreign_org;
CALL t.act_as('visitor_a');
SELECT t.try($$SELECT campfire.set_availability('aaaaaaaa-0000-4000-8000-00000000000a', 'online')$$) AS visitor_availability;

-- assignment, handover, claim ----------------------------------------------------------------------
RESET ROLE;
UPDATE campfire.conversations SET status = 'bot' WHERE id = (SELECT conversation_id FROM t.sessions WHERE name = 'visitor_b');
SET ROLE campfire_test_client;
\set conv_b '(SELECT conversation_id FROM t.sessions WHERE name = ''visitor_b'')'
CALL t.act_as('agent_a');
SELECT t.try(format($$SELECT campfire.claim_conversation(%L)$$, :conv_a)) AS claim_open_conversation;
SELECT status, handover_reason FROM campfire.request_handover(:conv_b, 'customer asked for a human');
SELECT t.try(format($$SELECT campfire.request_handover(%L)$$, :conv_b)) AS handover_twice;
CALL t.act_as('viewer_a');
SELECT t.try(format($$SELECT campfire.claim_conversation(%L)$$, :conv_b)) AS viewer_claims;
CALL t.act_as('admin_a');
SELECT status, assigned_to FROM campfire.claim_conversation(:conv_b);
CALL t.act_as('agent_a');
SELECT t.try(format($$SELECT campfire.claim_conversation(%L)$$, :conv_b)) AS claimed_already;
SELECT status, assigned_to FROM campfire.assign_conversation(:conv_b, 'a0000000-0000-4000-8000-0000000000a2');
SELECT t.try(format($$SELECT campfire.assign_conversation(%L, 'a0000000-0000-4000-8000-0000000000a3')$$, :conv_b)) AS assign_viewer;
SELECT t.try(format($$SELECT campfire.assign_conversation(%L, 'b0000000-0000-4000-8000-0000000000b2')$$, :conv_b)) AS assign_other_org;
SELECT status, assigned_to FROM campfire.assign_conversation(:conv_b, NULL);
SELECT t.try(format($$SELECT campfire.set_conversation_status(%L, 'archived')$$, :conv_b)) AS bad_status;
SELECT status FROM campfire.set_conversation_status(:conv_b, 'resolved');
CALL t.act_as('visitor_b');
SELECT t.try(format($$SELECT campfire.send_message(%L, 'are you there?')$$, :conv_b)) AS message_to_resolved;

-- The service's message: its insert takes the conversation's organization; an unknown or missing
-- conversation is P0002 with the others' message, and a retry returns the message stored first.
SET ROLE campfire_test_client;
CALL t.act_as('service');
SELECT m.organization_id = s.organization_id AS its_organization, m.sender_type, m.seq > 0 AS numbered
FROM t.sessions s, campfire.send_message(s.conversation_id, 'from the service', 'bot', 'svc-1') m WHERE s.name = 'visitor_orgb';
SELECT m.content AS retry_returns_the_first, m.seq = (SELECT max(x.seq) FROM campfire.messages x WHERE x.conversation_id = s.conversation_id) AS not_renumbered
FROM t.sessions s, campfire.send_message(s.conversation_id, 'from the service, again', 'bot', 'svc-1') m WHERE s.name = 'visitor_orgb';
SELECT t.try($$SELECT campfire.send_message('00000000-0000-4000-8000-000000000000', 'hi', 'bot')$$) AS service_unknown_conversation;
SELECT t.try($$SELECT campfire.send_message(NULL, 'hi', 'bot')$$) AS service_no_conversation;
SELECT t.try($$SELECT campfire.send_message('00000000-0000-4000-8000-000000000000', 'hi', 'bot', 'svc-2')$$) AS service_unknown_with_id;
CALL t.act_as('nobody');
RESET ROLE;

-- organizations and members ------------------------------------------------------------------------
CALL t.act_as('agent_a');
SELECT t.try($$SELECT campfire.create_organization('Mine', 'mine')$$) AS agent_creates_org;
SELECT t.try($$SELECT campfire.add_member('aaaaaaaa-0000-4000-8000-00000000000a', 'c0000000-0000-4000-8000-0000000000c1')$$) AS agent_adds_member;
CALL t.act_as('admin_a');
SELECT role, status FROM campfire.add_member('aaaaaaaa-0000-4000-8000-00000000000a', 'c0000000-0000-4000-8000-0000000000c1', 'viewer');
SELECT t.try($$SELECT campfire.add_member('aaaaaaaa-0000-4000-8000-00000000000a', 'c0000000-0000-4000-8000-0000000000c1', 'owner')$$) AS bad_role;
RESET ROLE;
CALL t.act_as('service');
SELECT t.try($$SELECT campfire.create_organization('Bad', 'Bad Slug!')$$) AS bad_slug;
SELECT t.try($$SELECT campfire.create_organization('Dup', 'org-a')$$) AS duplicate_slug;
SELECT campfire.create_organization('Org C', 'org-c') IS NOT NULL AS created;
SELECT name, slug FROM campfire.organizations WHERE slug = 'org-c';
SELECT t.try($$SELECT campfire.add_member('00000000-0000-4000-8000-000000000000', 'c0000000-0000-4000-8000-0000000000c1')$$) AS unknown_org;
CALL t.act_as('nobody');

-- Dashboard list and widget configuration -----------------------------------------------------------
SET ROLE campfire_test_client;
CALL t.act_as('agent_a');
SELECT t.redact((l.conversation).id::text) AS conversation, (l.conversation).status, l.unread
FROM campfire.list_conversations('aaaaaaaa-0000-4000-8000-00000000000a') l;
SELECT count(*) AS first_page FROM campfire.list_conversations('aaaaaaaa-0000-4000-8000-00000000000a', max_rows => 1);
SELECT count(*) AS second_page FROM campfire.list_conversations('aaaaaaaa-0000-4000-8000-00000000000a',
    after_updated_at => (SELECT (l.conversation).updated_at FROM campfire.list_conversations('aaaaaaaa-0000-4000-8000-00000000000a', max_rows => 1) l),
    after_id => (SELECT (l.conversation).id FROM campfire.list_conversations('aaaaaaaa-0000-4000-8000-00000000000a', max_rows => 1) l));
SELECT count(*) AS resolved FROM campfire.list_conversations('aaaaaaaa-0000-4000-8000-00000000000a', 'resolved');
SELECT t.try($$SELECT campfire.list_conversations('aaaaaaaa-0000-4000-8000-00000000000a', 'everything')$$) AS bad_filter;
SELECT t.try($$SELECT campfire.list_conversations('bbbbbbbb-0000-4000-8000-00000000000b')$$) AS other_org;
CALL t.act_as('nobody');
SELECT name, allowed_origins, agents_online FROM campfire.widget_config('aaaaaaaa-0000-4000-8000-00000000000a');
SELECT count(*) AS unknown FROM campfire.widget_config('00000000-0000-4000-8000-000000000000');
RESET ROLE;

-- Reads take no transaction id: each would write a commit record and bring the next
-- anti-wraparound vacuum closer (kept_plans.rs). A visitor's, an agent's and the relay's.
SET ROLE campfire_test_client;
CALL t.act_as('visitor_a');
BEGIN;
SELECT count(*) > 0 AS history FROM campfire.history((SELECT conversation_id FROM t.sessions WHERE name = 'visitor_a'));
SELECT count(*) > 0 AS events FROM campfire.events_since(0, 'org:aaaaaaaa-0000-4000-8000-00000000000a:conv:' || (SELECT conversation_id FROM t.sessions WHERE name = 'visitor_a'));
SELECT pg_catalog.txid_current_if_assigned() IS NULL AS visitor_read_without_a_transaction_id;
ROLLBACK;
CALL t.act_as('agent_a');
BEGIN;
SELECT count(*) > 0 AS listed FROM campfire.list_conversations('aaaaaaaa-0000-4000-8000-00000000000a');
SELECT count(*) > 0 AS history FROM campfire.history((SELECT conversation_id FROM t.sessions WHERE name = 'visitor_a'));
SELECT pg_catalog.txid_current_if_assigned() IS NULL AS agent_read_without_a_transaction_id;
ROLLBACK;
CALL t.act_as('nobody');
SET ROLE campfire_test_relay;
BEGIN;
SELECT count(*) > 0 AS logged FROM campfire.read_log(0);
SELECT campfire.authorize_channel('org:aaaaaaaa-0000-4000-8000-00000000000a', (SELECT claims FROM t.principals WHERE name = 'agent_a')) ->> 'topic' IS NOT NULL AS authorized;
SELECT campfire.log_head() > 0 AS head;
SELECT pg_catalog.txid_current_if_assigned() IS NULL AS relay_read_without_a_transaction_id;
ROLLBACK;
RESET ROLE;

-- Every update sets updated_at to the transaction's time (touch_updated_at, Rust), whatever the
-- statement wrote there.
BEGIN;
UPDATE campfire.organizations SET name = name, updated_at = '2000-01-01' WHERE id = 'aaaaaaaa-0000-4000-8000-00000000000a';
UPDATE campfire.organization_members SET display_name = display_name, updated_at = '2000-01-01' WHERE organization_id = 'aaaaaaaa-0000-4000-8000-00000000000a';
UPDATE campfire.conversations SET subject = 'touched', updated_at = '2000-01-01' WHERE organization_id = 'aaaaaaaa-0000-4000-8000-00000000000a';
UPDATE campfire.messages SET status = 'read', updated_at = '2000-01-01' WHERE organization_id = 'aaaaaaaa-0000-4000-8000-00000000000a';
SELECT (SELECT bool_and(updated_at = now()) FROM campfire.organizations WHERE id = 'aaaaaaaa-0000-4000-8000-00000000000a') AS organization,
       (SELECT bool_and(updated_at = now()) FROM campfire.organization_members WHERE organization_id = 'aaaaaaaa-0000-4000-8000-00000000000a') AS members,
       (SELECT bool_and(updated_at = now()) FROM campfire.conversations WHERE organization_id = 'aaaaaaaa-0000-4000-8000-00000000000a') AS conversations,
       (SELECT bool_and(updated_at = now()) FROM campfire.realtime_conversations WHERE organization_id = 'aaaaaaaa-0000-4000-8000-00000000000a') AS mirror,
       (SELECT bool_and(updated_at = now()) FROM campfire.messages WHERE organization_id = 'aaaaaaaa-0000-4000-8000-00000000000a') AS messages;
ROLLBACK;
