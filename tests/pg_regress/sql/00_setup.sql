-- Fixtures shared by every regress file: two organizations, their members, widget sessions,
-- conversations and messages, with fixed ids so that output is deterministic.
CREATE EXTENSION pg_campfire;

CREATE ROLE campfire_test_client NOLOGIN IN ROLE campfire_client;
CREATE ROLE campfire_test_login LOGIN IN ROLE campfire_client;
CREATE ROLE campfire_test_relay NOLOGIN IN ROLE campfire_relay;

CREATE SCHEMA t;
GRANT USAGE ON SCHEMA t TO PUBLIC;

-- Named principals and their claims.
CREATE TABLE t.principals (name text PRIMARY KEY, claims jsonb);
GRANT SELECT ON t.principals TO PUBLIC;

-- Acts as a principal for the rest of the session: its claims, and a role that RLS applies to.
CREATE PROCEDURE t.act_as(principal text) LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('request.jwt.claims',
                       coalesce((SELECT claims::text FROM t.principals WHERE name = principal), ''), false);
END
$$;

-- Random ids (sessions, conversations) replaced by their fixture names, for stable output.
CREATE FUNCTION t.redact(message text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    s record;
BEGIN
    FOR s IN SELECT * FROM t.sessions LOOP
        message := replace(message, s.conversation_id::text, '<conversation ' || s.name || '>');
        message := replace(message, s.widget_session_id::text, '<session ' || s.name || '>');
    END LOOP;
    RETURN message;
END
$$;

-- Runs a statement and reports 'ok' or the error's SQLSTATE and message.
CREATE FUNCTION t.try(statement text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE statement;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN t.redact(SQLSTATE || ': ' || SQLERRM);
END
$$;
-- The newest event id, whoever asks.
CREATE FUNCTION t.head() RETURNS bigint LANGUAGE sql SECURITY DEFINER
    AS 'SELECT campfire.log_head()';
GRANT EXECUTE ON ALL ROUTINES IN SCHEMA t TO PUBLIC;

INSERT INTO campfire.organizations (id, name, slug) VALUES
    ('aaaaaaaa-0000-4000-8000-00000000000a', 'Org A', 'org-a'),
    ('bbbbbbbb-0000-4000-8000-00000000000b', 'Org B', 'org-b');
INSERT INTO campfire.organization_members (organization_id, user_id, role, status, display_name) VALUES
    ('aaaaaaaa-0000-4000-8000-00000000000a', 'a0000000-0000-4000-8000-0000000000a1', 'admin', 'active', 'Alice Admin'),
    ('aaaaaaaa-0000-4000-8000-00000000000a', 'a0000000-0000-4000-8000-0000000000a2', 'agent', 'active', 'Andy Agent'),
    ('aaaaaaaa-0000-4000-8000-00000000000a', 'a0000000-0000-4000-8000-0000000000a3', 'viewer', 'active', 'Vic Viewer'),
    ('aaaaaaaa-0000-4000-8000-00000000000a', 'a0000000-0000-4000-8000-0000000000a4', 'agent', 'disabled', 'Ina Inactive'),
    ('bbbbbbbb-0000-4000-8000-00000000000b', 'b0000000-0000-4000-8000-0000000000b2', 'agent', 'active', 'Bob Agent');

-- Widget sessions through the API; ids are random, so keep them in a fixture table.
CREATE TABLE t.sessions (name text PRIMARY KEY, organization_id uuid, conversation_id uuid,
                         widget_session_id uuid, secret text);
GRANT SELECT ON t.sessions TO PUBLIC;
INSERT INTO t.sessions
SELECT 'visitor_a', 'aaaaaaaa-0000-4000-8000-00000000000a', s.*
FROM campfire.start_widget_session('aaaaaaaa-0000-4000-8000-00000000000a', 'visitor-a', 'va@example.com', 'Val A') s;
INSERT INTO t.sessions
SELECT 'visitor_b', 'aaaaaaaa-0000-4000-8000-00000000000a', s.*
FROM campfire.start_widget_session('aaaaaaaa-0000-4000-8000-00000000000a', 'visitor-b', 'vb@example.com', 'Val B') s;
INSERT INTO t.sessions
SELECT 'visitor_orgb', 'bbbbbbbb-0000-4000-8000-00000000000b', s.*
FROM campfire.start_widget_session('bbbbbbbb-0000-4000-8000-00000000000b', 'visitor-c', NULL, NULL) s;

INSERT INTO t.principals VALUES
    ('visitor_a', (SELECT jsonb_build_object('role', 'visitor', 'widget_session_id', widget_session_id) FROM t.sessions WHERE name = 'visitor_a')),
    ('visitor_b', (SELECT jsonb_build_object('role', 'visitor', 'widget_session_id', widget_session_id) FROM t.sessions WHERE name = 'visitor_b')),
    ('admin_a', '{"role":"authenticated","sub":"a0000000-0000-4000-8000-0000000000a1"}'),
    ('agent_a', '{"role":"authenticated","sub":"a0000000-0000-4000-8000-0000000000a2"}'),
    ('viewer_a', '{"role":"authenticated","sub":"a0000000-0000-4000-8000-0000000000a3"}'),
    ('inactive_a', '{"role":"authenticated","sub":"a0000000-0000-4000-8000-0000000000a4"}'),
    ('agent_b', '{"role":"authenticated","sub":"b0000000-0000-4000-8000-0000000000b2"}'),
    ('stranger', '{"role":"authenticated","sub":"c0000000-0000-4000-8000-0000000000c1"}'),
    ('anon', '{"role":"anon"}'),
    ('service', '{"role":"service_role"}'),
    ('nobody', NULL);

-- One message each way in every conversation, and an agent-only note in visitor A's.
CALL t.act_as('visitor_a');
SELECT seq, sender_type, content FROM campfire.send_message((SELECT conversation_id FROM t.sessions WHERE name = 'visitor_a'), 'Hello from A');
CALL t.act_as('visitor_b');
SELECT seq, sender_type, content FROM campfire.send_message((SELECT conversation_id FROM t.sessions WHERE name = 'visitor_b'), 'Hello from B');
CALL t.act_as('agent_a');
SELECT seq, sender_type, sender_name, content FROM campfire.send_message((SELECT conversation_id FROM t.sessions WHERE name = 'visitor_a'), 'Hi A, Andy here');
SELECT seq, sender_type, message_type FROM campfire.send_message((SELECT conversation_id FROM t.sessions WHERE name = 'visitor_a'), 'A seems happy', message_type => 'note');
-- Read watermarks: agent A has read everything, visitor A up to the first message.
SELECT campfire.mark_read((SELECT conversation_id FROM t.sessions WHERE name = 'visitor_a')) AS agent_a_read;
CALL t.act_as('visitor_a');
SELECT campfire.mark_read((SELECT conversation_id FROM t.sessions WHERE name = 'visitor_a'), 1) AS visitor_a_read;
CALL t.act_as('agent_b');
SELECT seq, sender_type, content FROM campfire.send_message((SELECT conversation_id FROM t.sessions WHERE name = 'visitor_orgb'), 'Hi C');
CALL t.act_as('nobody');
