-- The row-level security matrix: what each principal sees and may write, table by table.
-- Runs as a plain member of campfire_client (superusers bypass RLS).
CREATE FUNCTION t.visibility() RETURNS TABLE (tbl text, visible bigint) LANGUAGE plpgsql AS $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['organizations', 'organization_members', 'widget_sessions', 'conversations',
                                'realtime_conversations', 'widget_conversations', 'messages', 'conversation_reads', 'events']
    LOOP
        tbl := name;
        EXECUTE format('SELECT count(*) FROM campfire.%I', name) INTO visible;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Row counts per principal, one line each.
CREATE FUNCTION t.matrix(principal text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    CALL t.act_as(principal);
    RETURN (SELECT string_agg(format('%s=%s', tbl, visible), ' ') FROM t.visibility());
END
$$;
GRANT EXECUTE ON ALL ROUTINES IN SCHEMA t TO PUBLIC;

SET ROLE campfire_test_client;

SELECT p.name, t.matrix(p.name) FROM t.principals p ORDER BY p.name;

-- A visitor sees its own messages but never the agent-only note, nor another visitor's.
CALL t.act_as('visitor_a');
SELECT seq, sender_type, content FROM campfire.messages ORDER BY seq;
SELECT count(*) AS visitor_b_messages_seen_by_a FROM campfire.messages
WHERE conversation_id = (SELECT conversation_id FROM t.sessions WHERE name = 'visitor_b');
SELECT count(*) AS events_seen_by_a, bool_and(topic LIKE '%:conv:%') AS only_conversation_channel FROM campfire.events;
CALL t.act_as('visitor_b');
SELECT seq, sender_type, content FROM campfire.messages ORDER BY seq;

-- Writes --------------------------------------------------------------------------------------------
-- Visitor B cannot post into visitor A's conversation, by the API or by a direct INSERT.
SELECT t.try(format($$SELECT campfire.send_message(%L, 'intrusion')$$,
                    (SELECT conversation_id FROM t.sessions WHERE name = 'visitor_a')));
SELECT t.try(format($$INSERT INTO campfire.messages (conversation_id, organization_id, content, sender_type)
                      VALUES (%L, 'aaaaaaaa-0000-4000-8000-00000000000a', 'intrusion', 'customer')$$,
                    (SELECT conversation_id FROM t.sessions WHERE name = 'visitor_a')));
-- ...nor pretend to be an agent in its own.
SELECT t.try(format($$INSERT INTO campfire.messages (conversation_id, organization_id, content, sender_type)
                      VALUES (%L, 'aaaaaaaa-0000-4000-8000-00000000000a', 'I am staff', 'agent')$$,
                    (SELECT conversation_id FROM t.sessions WHERE name = 'visitor_b')));
-- A visitor changes no conversation and creates no organization.
SELECT t.try($$UPDATE campfire.conversations SET subject = 'x'$$) AS update_attempt;
SELECT count(*) AS conversations_changed FROM campfire.conversations WHERE subject = 'x';
SELECT t.try($$INSERT INTO campfire.organizations (name, slug) VALUES ('Evil', 'evil')$$);
SELECT t.try($$SELECT * FROM campfire.server_keys$$);

-- Viewer: reads, never writes.
CALL t.act_as('viewer_a');
SELECT t.try(format($$SELECT campfire.send_message(%L, 'viewer talking')$$,
                    (SELECT conversation_id FROM t.sessions WHERE name = 'visitor_a')));
SELECT t.try(format($$INSERT INTO campfire.messages (conversation_id, organization_id, content, sender_type)
                      VALUES (%L, 'aaaaaaaa-0000-4000-8000-00000000000a', 'viewer talking', 'agent')$$,
                    (SELECT conversation_id FROM t.sessions WHERE name = 'visitor_a')));
UPDATE campfire.conversations SET subject = 'viewer was here';
SELECT count(*) AS viewer_updates_applied FROM campfire.conversations WHERE subject = 'viewer was here';
SELECT t.try($$INSERT INTO campfire.organization_members (organization_id, user_id, role)
               VALUES ('aaaaaaaa-0000-4000-8000-00000000000a', 'c0000000-0000-4000-8000-0000000000c1', 'admin')$$);

-- Agent of org A: writes in A, nothing in B.
CALL t.act_as('agent_a');
SELECT t.try(format($$SELECT campfire.send_message(%L, 'cross-tenant')$$,
                    (SELECT conversation_id FROM t.sessions WHERE name = 'visitor_orgb')));
SELECT t.try(format($$INSERT INTO campfire.messages (conversation_id, organization_id, content, sender_type)
                      VALUES (%L, 'bbbbbbbb-0000-4000-8000-00000000000b', 'cross-tenant', 'agent')$$,
                    (SELECT conversation_id FROM t.sessions WHERE name = 'visitor_orgb')));
-- A composite reference cannot point a message of org A at org B's conversation.
SELECT t.try(format($$INSERT INTO campfire.messages (conversation_id, organization_id, content, sender_type)
                      VALUES (%L, 'aaaaaaaa-0000-4000-8000-00000000000a', 'smuggled', 'agent')$$,
                    (SELECT conversation_id FROM t.sessions WHERE name = 'visitor_orgb')));
UPDATE campfire.conversations SET subject = 'agent a' WHERE organization_id = 'bbbbbbbb-0000-4000-8000-00000000000b';
SELECT t.try($$UPDATE campfire.organization_members SET role = 'admin'
               WHERE user_id = 'a0000000-0000-4000-8000-0000000000a2'$$) AS self_promotion;
SELECT role FROM campfire.organization_members WHERE user_id = 'a0000000-0000-4000-8000-0000000000a2';
SELECT t.try(format($$SELECT campfire.send_message(%L, 'agent reply in A')$$,
                    (SELECT conversation_id FROM t.sessions WHERE name = 'visitor_a')));

-- Inactive member and strangers: nothing.
CALL t.act_as('inactive_a');
SELECT t.try(format($$SELECT campfire.send_message(%L, 'still here?')$$,
                    (SELECT conversation_id FROM t.sessions WHERE name = 'visitor_a')));

-- No claims: nothing, and a clear error from the API.
CALL t.act_as('nobody');
SELECT t.try(format($$SELECT campfire.send_message(%L, 'who am I')$$,
                    (SELECT conversation_id FROM t.sessions WHERE name = 'visitor_a')));

-- A 'service_role' claim alone is not enough: the login role must be in campfire_service.
RESET ROLE;
\c - campfire_test_login
CALL t.act_as('service');
SELECT campfire.is_service() AS service_without_membership, t.matrix('service');
\c - postgres
CALL t.act_as('service');
SELECT campfire.is_service() AS service_as_member;
CALL t.act_as('nobody');

-- Claims are read as jsonb reads them (campfire.claim keeps the parsed claims while the setting's
-- text stays the same): the last of a repeated key, any non-string as its JSON, nothing from
-- claims that are no object, numbers beyond a double as they are. A changed setting is read at
-- once, even within one statement, and claims that are not JSON, or hold \u0000, are refused.
CREATE FUNCTION t.claim_under(claims text, key text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('request.jwt.claims', claims, true);
    RETURN campfire.claim(key);
END
$$;
CREATE FUNCTION t.is_service_under(claims text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('request.jwt.claims', claims, true);
    RETURN campfire.is_service();
END
$$;
SELECT c.claims, c.key, left(t.claim_under(c.claims, c.key), 30) AS claim,
       t.claim_under(c.claims, c.key) IS NOT DISTINCT FROM (coalesce(nullif(c.claims, '')::jsonb, '{}') ->> c.key) AS as_jsonb
FROM (VALUES ('{"role":"visitor","sub":"x"}', 'role'), ('{"role":"visitor"}', 'sub'), ('{"role":null}', 'role'),
             ('{"role":"anon","role":"service_role"}', 'role'), ('{"n":12}', 'n'), ('["role"]', 'role'),
             ('"role"', 'role'), ('', 'role'), ('{"n":1e400}', 'n'), ('{"n":1.50}', 'n'),
             ('{"o":{"b":1,"a":[true,null]}}', 'o'), ('{"role":"a\u0041"}', 'role')) c(claims, key);
SELECT c.claims, t.is_service_under(c.claims) AS is_service
FROM (VALUES ('{"role":"visitor"}'), ('{"role":"service_role"}'), ('{"role":"authenticated"}'),
             ('{"role":"service_role","role":"anon"}'), ('{"role":["service_role"]}'), ('')) c(claims);
SELECT t.try($$SELECT t.claim_under('{"role":', 'role')$$) AS claims_not_json;
SELECT t.try($$SELECT t.is_service_under('service_role')$$) AS claims_not_json;
SELECT t.try($$SELECT t.claim_under('{"role":"visitor\u0000"}', 'role')$$) AS claims_with_nul;
-- The answers read are kept with the parsed claims: under one setting, twelve keys (more than
-- are kept) asked three times each, then under another setting, answer as ->> does.
CREATE FUNCTION t.claims_asked_again(settings text[]) RETURNS TABLE (asked bigint, differing bigint, present bigint)
    LANGUAGE plpgsql AS $$
DECLARE
    setting text;
    answer text;
BEGIN
    asked := 0; differing := 0; present := 0;
    FOREACH setting IN ARRAY settings LOOP
        PERFORM set_config('request.jwt.claims', setting, true);
        FOR round IN 1..3 LOOP
            FOR k IN 1..12 LOOP
                answer := campfire.claim('k' || k);
                asked := asked + 1;
                differing := differing + (answer IS DISTINCT FROM (setting::jsonb ->> ('k' || k)))::int;
                present := present + (answer IS NOT NULL)::int;
            END LOOP;
        END LOOP;
    END LOOP;
    RETURN NEXT;
END
$$;
SELECT * FROM t.claims_asked_again(ARRAY[
    '{"k1":"a","k2":"b","k3":"c","k4":"d","k5":"e","k6":"f","k7":"g","k8":"h","k9":"i","k10":"j","k11":"k","k12":"l"}',
    '{"k1":"z","k12":"y"}', '{"k1":"a","k2":"b","k3":"c","k4":"d","k5":"e","k6":"f","k7":"g","k8":"h","k9":"i","k10":"j","k11":"k","k12":"l"}']);
CALL t.act_as('nobody');

-- may_insert_message asks one question per kind of sender; it answers as the single expression
-- it replaced, for every principal and every kind of message, in both organizations.
CREATE FUNCTION t.insert_rule(principal text) RETURNS TABLE (allowed bigint, differing bigint) LANGUAGE plpgsql AS $$
BEGIN
    CALL t.act_as(principal);
    RETURN QUERY
    SELECT count(*) FILTER (WHERE now_answer), count(*) FILTER (WHERE now_answer IS DISTINCT FROM before)
    FROM (SELECT campfire.may_insert_message(o.id, s.conversation_id, k.sender, m.kind, u.id) AS now_answer,
                 coalesce(campfire.is_service()
                          OR (o.id = ANY (campfire.member_organizations('agent')) AND k.sender <> 'customer')
                          OR (s.conversation_id = ANY (campfire.visitor_conversations())
                              AND k.sender = 'customer' AND m.kind = 'text' AND u.id IS NULL), false) AS before
          FROM (VALUES ('aaaaaaaa-0000-4000-8000-00000000000a'::uuid), ('bbbbbbbb-0000-4000-8000-00000000000b')) o(id),
               t.sessions s,
               (VALUES ('customer'), ('agent'), ('bot'), (NULL)) k(sender),
               (VALUES ('text'), ('note'), (NULL)) m(kind),
               (VALUES (NULL::uuid), ('a0000000-0000-4000-8000-0000000000a2')) u(id)) answers;
END
$$;
SELECT p.name, r.allowed, r.differing FROM t.principals p, t.insert_rule(p.name) r ORDER BY p.name;
CALL t.act_as('nobody');

-- The helpers row-level security asks (Rust, row_access.rs) answer as the SQL they replaced, for
-- every principal, every minimum role (and none, and a wrong one) and both organizations.
CREATE FUNCTION t.sorted(ids uuid[]) RETURNS uuid[] LANGUAGE sql IMMUTABLE
    RETURN ARRAY(SELECT i FROM unnest(ids) i ORDER BY i);
CREATE FUNCTION t.helpers_differing(principal text) RETURNS TABLE (helper text, answer text) LANGUAGE plpgsql AS $$
DECLARE
    me uuid;
    session uuid;
BEGIN
    CALL t.act_as(principal);
    me := CASE WHEN campfire.claim('role') = 'authenticated' THEN campfire.try_uuid(campfire.claim('sub')) END;
    session := (SELECT s.id FROM campfire.widget_sessions s
                WHERE campfire.claim('role') = 'visitor' AND s.id = campfire.try_uuid(campfire.claim('widget_session_id'))
                  AND s.revoked_at IS NULL AND s.expires_at > now());
    RETURN QUERY
    SELECT 'member_organizations(' || coalesce(r.min_role, 'NULL') || ')', t.sorted(campfire.member_organizations(r.min_role))::text
    FROM (VALUES ('viewer'), ('agent'), ('admin'), ('owner'), (NULL)) r(min_role)
    WHERE t.sorted(campfire.member_organizations(r.min_role)) IS DISTINCT FROM
          t.sorted(ARRAY(SELECT m.organization_id FROM campfire.organization_members m
                         WHERE m.user_id = me AND m.status = 'active'
                           AND CASE r.min_role WHEN 'viewer' THEN true
                                               WHEN 'agent' THEN m.role IN ('agent', 'admin')
                                               WHEN 'admin' THEN m.role = 'admin'
                                               ELSE false END))
    UNION ALL
    SELECT 'member_role(' || o.id || ')', campfire.member_role(o.id)
    FROM (VALUES ('aaaaaaaa-0000-4000-8000-00000000000a'::uuid), ('bbbbbbbb-0000-4000-8000-00000000000b'), (NULL)) o(id)
    WHERE campfire.member_role(o.id) IS DISTINCT FROM
          (SELECT m.role FROM campfire.organization_members m
           WHERE m.organization_id = o.id AND m.user_id = me AND m.status = 'active')
    UNION ALL
    SELECT 'visitor_conversations()', t.sorted(campfire.visitor_conversations())::text
    WHERE t.sorted(campfire.visitor_conversations()) IS DISTINCT FROM
          t.sorted(ARRAY(SELECT c.id FROM campfire.conversations c WHERE c.widget_session_id = session))
    UNION ALL
    SELECT 'visitor_conversation_org(' || coalesce(v.id::text, 'NULL') || ')', campfire.visitor_conversation_org(v.id)::text
    FROM (SELECT s.conversation_id FROM t.sessions s
          UNION ALL VALUES ('00000000-0000-4000-8000-000000000000'::uuid), (NULL)) v(id)
    WHERE campfire.visitor_conversation_org(v.id) IS DISTINCT FROM
          (SELECT w.organization_id FROM campfire.widget_conversations w WHERE w.id = v.id)
    UNION ALL
    SELECT 'current_widget_session_id()', campfire.current_widget_session_id()::text
    WHERE campfire.current_widget_session_id() IS DISTINCT FROM session;
END
$$;
SELECT p.name, d.helper, d.answer FROM t.principals p, t.helpers_differing(p.name) d ORDER BY 1, 2;
-- Each principal's own answers, so that a fixture that answers nothing cannot pass the above.
CREATE FUNCTION t.helper_answers(principal text)
    RETURNS TABLE (organizations integer, role_in_a text, conversations integer, has_session boolean, orgs_found bigint)
    LANGUAGE plpgsql AS $$
BEGIN
    CALL t.act_as(principal);
    RETURN QUERY SELECT cardinality(campfire.member_organizations('viewer')), campfire.member_role('aaaaaaaa-0000-4000-8000-00000000000a'),
                        cardinality(campfire.visitor_conversations()), campfire.current_widget_session_id() IS NOT NULL,
                        (SELECT count(*) FROM t.sessions s WHERE campfire.visitor_conversation_org(s.conversation_id) IS NOT NULL);
END
$$;
SELECT p.name, a.* FROM t.principals p, t.helper_answers(p.name) a ORDER BY 1;
CALL t.act_as('nobody');

-- The helpers keep an answer only while nothing it could see has changed (read_memo.rs). In one
-- transaction, asked again and again: a membership the transaction disables is gone from the
-- next question, back after a rollback to a savepoint, and gone within the statement that
-- disables it, for the questions after the write.
CALL t.act_as('agent_a');
PREPARE agent_answers AS
SELECT cardinality(campfire.member_organizations('viewer')) AS organizations,
       campfire.member_role('aaaaaaaa-0000-4000-8000-00000000000a') AS role;
CREATE FUNCTION t.disable_agent_a() RETURNS boolean LANGUAGE sql SECURITY DEFINER AS $$
    UPDATE campfire.organization_members SET status = 'disabled'
    WHERE user_id = (SELECT (claims ->> 'sub')::uuid FROM t.principals WHERE name = 'agent_a') RETURNING true
$$;
BEGIN;
EXECUTE agent_answers;
EXECUTE agent_answers;
SAVEPOINT before_disabling;
SELECT t.disable_agent_a() AS disabled;
EXECUTE agent_answers;
ROLLBACK TO SAVEPOINT before_disabling;
EXECUTE agent_answers;
SELECT cardinality(campfire.member_organizations('viewer')) AS asked_before, t.disable_agent_a() AS disabled,
       cardinality(campfire.member_organizations('viewer')) AS asked_after;
ROLLBACK;
EXECUTE agent_answers;
DEALLOCATE agent_answers;
CALL t.act_as('nobody');

-- may_insert_message is PARALLEL SAFE, so a query may call it in a parallel worker: there it
-- answers as in the backend (its reads used to take a transaction id, which a worker may not).
CALL t.act_as('visitor_a');
SET force_parallel_mode = on;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
-- The seq scan under the Gather, in the worker, computes it.
EXPLAIN (COSTS OFF, VERBOSE)
SELECT s.name, campfire.may_insert_message(s.organization_id, s.conversation_id, 'customer', 'text', NULL) AS may_send
FROM t.sessions s ORDER BY 1;
SELECT s.name, campfire.may_insert_message(s.organization_id, s.conversation_id, 'customer', 'text', NULL) AS may_send
FROM t.sessions s ORDER BY 1;
RESET force_parallel_mode;
RESET parallel_setup_cost;
RESET parallel_tuple_cost;
CALL t.act_as('nobody');

-- try_uuid takes the canonical form only, as the regex it replaced did.
SELECT v.value, campfire.try_uuid(v.value) AS uuid,
       campfire.try_uuid(v.value) IS NOT DISTINCT FROM
       (CASE WHEN v.value ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN v.value::uuid END) AS as_the_regex
FROM (VALUES ('a0000000-0000-4000-8000-0000000000a1'), ('A0000000-0000-4000-8000-0000000000AB'),
             ('{a0000000-0000-4000-8000-0000000000a1}'), ('a00000000000400080000000000000a1'),
             ('urn:uuid:a0000000-0000-4000-8000-0000000000a1'), (E'a0000000-0000-4000-8000-0000000000a1\n'),
             ('a0000000-0000-4000-8000-0000000000a'), ('a0000000-0000-4000-8000-0000000000a12'),
             ('a000000-00000-4000-8000-0000000000a1'), ('g0000000-0000-4000-8000-0000000000a1'),
             ('a0000000-0000-4000-8000-0000000000aé'), (''), (NULL)) v(value);
