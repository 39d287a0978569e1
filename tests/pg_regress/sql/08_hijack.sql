-- Attacks on code that runs with the extension owner's rights (SECURITY DEFINER functions and
-- the trigger functions that run as owner), through the one place an ordinary login can put
-- objects of its own: its temp schema. PostgreSQL searches pg_temp first for tables and types
-- unless search_path names it last, so a login could shadow `uuid` with a domain whose CHECK
-- runs its code, or `realtime_conversations` with a view whose trigger does. Every planted
-- object calls pg_temp.planted(), which records who ran it and, when that is anyone but the
-- login itself, tries to make the login a superuser. Nothing planted may ever run as the owner.
CREATE ROLE campfire_test_attacker LOGIN IN ROLE campfire_client;
CREATE ROLE campfire_test_attacker_relay LOGIN IN ROLE campfire_relay;
CREATE ROLE campfire_test_attacker_service LOGIN IN ROLE campfire_service;

-- Plants the hostile objects in the calling login's temp schema.
CREATE PROCEDURE t.plant() LANGUAGE plpgsql AS $plant$
DECLARE
    name text;
    columns text;
BEGIN
    CREATE TEMP TABLE planted_runs (what text, who text);
    GRANT ALL ON planted_runs TO PUBLIC;
    CREATE FUNCTION pg_temp.planted(what text) RETURNS boolean LANGUAGE plpgsql AS $f$
    BEGIN
        INSERT INTO pg_temp.planted_runs
        VALUES (what || coalesce(' during ' || pg_catalog.current_setting('t.call', true), ''), current_user);
        IF current_user <> session_user THEN
            BEGIN
                EXECUTE format('ALTER ROLE %I SUPERUSER', session_user);
            EXCEPTION WHEN OTHERS THEN NULL;
            END;
        END IF;
        RETURN true;
    END
    $f$;
    CREATE FUNCTION pg_temp.planted_trigger() RETURNS trigger LANGUAGE plpgsql AS $f$
    BEGIN
        PERFORM pg_temp.planted('trigger on ' || TG_TABLE_NAME);
        RETURN NULL;
    END
    $f$;

    -- Functions and operators named like the ones the code calls (PostgreSQL never looks for
    -- functions or operators in pg_temp unless it is named: these must stay unused).
    CREATE FUNCTION pg_temp.now() RETURNS timestamptz LANGUAGE sql
        AS $f$ SELECT pg_catalog.now() WHERE pg_temp.planted('function now') $f$;
    CREATE FUNCTION pg_temp.left(text, integer) RETURNS text LANGUAGE sql
        AS $f$ SELECT pg_catalog.left($1, $2) WHERE pg_temp.planted('function left') $f$;
    CREATE FUNCTION pg_temp.format(text, text) RETURNS text LANGUAGE sql
        AS $f$ SELECT pg_catalog.format($1, $2) WHERE pg_temp.planted('function format') $f$;
    CREATE FUNCTION pg_temp.pg_notify(text, text) RETURNS void LANGUAGE sql
        AS $f$ SELECT pg_catalog.pg_notify($1, $2) WHERE pg_temp.planted('function pg_notify') $f$;
    CREATE FUNCTION pg_temp.try_uuid(text) RETURNS uuid LANGUAGE sql
        AS $f$ SELECT campfire.try_uuid($1) WHERE pg_temp.planted('function try_uuid') $f$;
    CREATE FUNCTION pg_temp.uuid_eq(uuid, uuid) RETURNS boolean LANGUAGE sql
        AS $f$ SELECT pg_temp.planted('operator uuid = uuid') AND $1 OPERATOR(pg_catalog.=) $2 $f$;
    CREATE OPERATOR pg_temp.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = pg_temp.uuid_eq);
    CREATE FUNCTION pg_temp.text_eq(text, text) RETURNS boolean LANGUAGE sql
        AS $f$ SELECT pg_temp.planted('operator text = text') AND $1 OPERATOR(pg_catalog.=) $2 $f$;
    CREATE OPERATOR pg_temp.= (LEFTARG = text, RIGHTARG = text, FUNCTION = pg_temp.text_eq);

    -- Every extension table shadowed by a view of the same columns: reading it runs planted
    -- code (and returns nothing), writing it fires a planted trigger.
    FOR name, columns IN
        SELECT c.relname, string_agg(format('NULL::%s AS %I', pg_catalog.format_type(a.atttypid, a.atttypmod), a.attname),
                                     ', ' ORDER BY a.attnum)
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        WHERE c.relnamespace = 'campfire'::regnamespace AND c.relkind = 'r'
        GROUP BY c.relname
    LOOP
        EXECUTE format('CREATE TEMP VIEW %I AS SELECT %s FROM (VALUES (1)) one WHERE NOT pg_temp.planted(%L)',
                       name, columns, 'table ' || name);
        EXECUTE format('CREATE TRIGGER planted INSTEAD OF INSERT OR UPDATE OR DELETE ON pg_temp.%I
                        FOR EACH ROW EXECUTE FUNCTION pg_temp.planted_trigger()', name);
    END LOOP;

    -- Types last (the objects above are declared with the real ones): domains named like the
    -- built-in types and the extension's enums, whose CHECK runs planted code on every value.
    FOREACH name IN ARRAY ARRAY['uuid', 'text', 'jsonb', 'json', 'int8', 'int4', 'int2', 'bool', 'bytea',
                                'timestamptz', 'timestamp', 'interval', 'numeric', 'regclass', 'name', 'oid',
                                'varchar', 'bigint', 'integer', 'boolean']
    LOOP
        EXECUTE format('CREATE DOMAIN pg_temp.%I AS %s CHECK (pg_temp.planted(%L))', name,
                       CASE WHEN name IN ('bigint', 'integer', 'boolean') THEN name ELSE 'pg_catalog.' || name END,
                       'type ' || name);
    END LOOP;
    CREATE DOMAIN pg_temp.conversation_status AS campfire.conversation_status CHECK (pg_temp.planted('type conversation_status'));
    CREATE DOMAIN pg_temp.conversation_priority AS campfire.conversation_priority CHECK (pg_temp.planted('type conversation_priority'));

    -- PL/pgSQL compiles a function once per session: run every one the login may call first,
    -- so that owner's-rights code calling it later would inherit anything it resolved here.
    FOR name, columns IN
        SELECT p.oid::regproc::text, (SELECT string_agg('NULL', ', ') FROM generate_series(1, p.pronargs))
        FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = 'campfire'::regnamespace AND has_function_privilege(p.oid, 'EXECUTE')
          AND p.prorettype <> 'trigger'::regtype
    LOOP
        BEGIN
            EXECUTE format('SELECT %s(%s)', name, columns);
        EXCEPTION WHEN OTHERS THEN NULL;
        END;
    END LOOP;
END
$plant$;

-- What planted code did with anyone's rights but the login's own: must stay empty.
CREATE FUNCTION t.hijacked() RETURNS TABLE (what text, who text) LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT DISTINCT r.what, r.who FROM pg_temp.planted_runs r WHERE r.who <> session_user ORDER BY 1, 2;
END
$$;

-- Throwaway fixtures: a visitor to erase, and the conversation the attacks write to.
INSERT INTO t.sessions
SELECT 'hijack', 'aaaaaaaa-0000-4000-8000-00000000000a', s.*
FROM campfire.start_widget_session('aaaaaaaa-0000-4000-8000-00000000000a', 'hijack-visitor', 'hv@example.com', 'Hi Jack') s;
INSERT INTO t.principals VALUES
    ('hijack', (SELECT jsonb_build_object('role', 'visitor', 'widget_session_id', widget_session_id) FROM t.sessions WHERE name = 'hijack'));

-- Every API function, and through them every trigger, under one principal's claims. Each call's
-- outcome is printed: refusals are expected for some principals, planted code never.
CREATE FUNCTION t.attack(principal text) RETURNS TABLE (call text, result text) LANGUAGE plpgsql AS $$
DECLARE
    conv text := (SELECT conversation_id::text FROM t.sessions WHERE name = 'hijack');
    session text := (SELECT widget_session_id::text FROM t.sessions WHERE name = 'hijack');
    secret text := (SELECT s.secret FROM t.sessions s WHERE s.name = 'hijack');
    org constant text := 'aaaaaaaa-0000-4000-8000-00000000000a';
    visitor text := format('hijack-%s-%s', principal, session_user);
    throwaway text;
    statement text;
BEGIN
    -- A session of its own for each run, for the revocation and erasure at the end.
    BEGIN
        SELECT s.widget_session_id INTO throwaway FROM campfire.start_widget_session(org::uuid, visitor) s;
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    CALL t.act_as(principal);
    FOREACH statement IN ARRAY ARRAY[
        format('SELECT campfire.start_widget_session(%L, %L)', org, visitor),
        format('SELECT campfire.start_widget_session(%L, %L, resume_secret => %L)', org, 'hijack-visitor', secret),
        format('SELECT campfire.current_widget_session_id(), campfire.visitor_conversations(), campfire.visitor_conversation_org(%L), campfire.member_organizations(), campfire.member_role(%L), campfire.has_org_role(%L, %L)', conv, org, org, 'agent'),
        format('SELECT campfire.send_message(%L, %L)', conv, 'planted? ' || principal),
        format('SELECT campfire.send_message(%L, %L, client_message_id => %L)', conv, 'retry', 'hijack-' || principal),
        format('SELECT campfire.send_message(%L, %L, message_type => %L)', conv, 'a note', 'note'),
        format('INSERT INTO campfire.messages (conversation_id, organization_id, content, sender_type) VALUES (%L, %L, %L, %L)', conv, org, 'direct', 'customer'),
        format('UPDATE campfire.messages SET content = content WHERE conversation_id = %L', conv),
        format('SELECT count(*) FROM campfire.history(%L)', conv),
        format('SELECT campfire.mark_read(%L)', conv),
        format('SELECT count(*) FROM campfire.events_since(0, %L)', 'org:' || org || ':conv:' || conv),
        format('SELECT count(*) FROM campfire.list_conversations(%L)', org),
        format('SELECT * FROM campfire.widget_config(%L)', org),
        format('SELECT campfire.set_availability(%L, %L)', org, 'online'),
        format('SELECT campfire.set_availability(%L, %L)', org, 'offline'),
        format('SELECT campfire.assign_conversation(%L, %L)', conv, 'a0000000-0000-4000-8000-0000000000a2'),
        format('SELECT campfire.set_conversation_status(%L, %L)', conv, 'bot'),
        format('SELECT campfire.request_handover(%L, %L)', conv, 'planted?'),
        format('SELECT campfire.claim_conversation(%L)', conv),
        format('UPDATE campfire.conversations SET subject = %L WHERE id = %L', 'planted?', conv),
        format('SELECT campfire.add_member(%L, %L, %L)', org, 'a0000000-0000-4000-8000-0000000000a2', 'agent'),
        format('SELECT campfire.create_organization(%L, %L)', 'Hijack', pg_catalog.replace(visitor, '_', '-')),
        format('SELECT campfire.revoke_widget_session(%L)', throwaway),
        format('SELECT campfire.erase_visitor(%L, %L)', org, visitor),
        format('SELECT campfire.authorize_channel(%L, campfire.current_claims())', 'org:' || org || ':conv:' || conv),
        format('SELECT count(*) FROM campfire.read_log(0, 10)'),
        'SELECT campfire.log_head(), campfire.log_tail()',
        format('SELECT campfire.visitor_claims(%L)', secret),
        format('SELECT campfire.broadcast(%L, %L, %L, %L)', org, 'org:' || org || ':widget:session:' || session, 'custom', '{}'),
        'SELECT campfire.prune_events(interval ''100 years'')']
    LOOP
        call := coalesce((regexp_match(statement, '^(INSERT INTO|UPDATE) campfire\.(\w+)'))[2] || ' ' || split_part(statement, ' ', 1),
                         (regexp_match(statement, 'campfire\.(\w+)'))[1]);
        PERFORM set_config('t.call', call, false);
        result := regexp_replace(t.try(statement), '[0-9a-f]{8}-[0-9a-f-]{27}', '<id>', 'g');
        RETURN NEXT;
    END LOOP;
    PERFORM set_config('t.call', '', false);
END
$$;
GRANT EXECUTE ON ALL ROUTINES IN SCHEMA t TO PUBLIC;

-- An application login (campfire_client) under every kind of claims.
\c - campfire_test_attacker
CALL t.plant();
-- The planted types are live: the login's own casts run planted code (as the login itself).
SELECT 'x'::text AS shadowed;
SELECT count(*) > 0 AS planted_code_ran_for_the_login FROM pg_temp.planted_runs;
SELECT p.name AS principal, a.call, a.result
FROM unnest(ARRAY['hijack', 'admin_a', 'agent_a', 'viewer_a', 'agent_b', 'service', 'nobody']) AS p(name)
CROSS JOIN LATERAL t.attack(p.name) a;
-- Commit-time work (the event flush, the notifier hand-off) ran for each statement above.
SELECT * FROM t.hijacked();
SELECT rolsuper AS became_superuser FROM pg_catalog.pg_roles WHERE rolname = session_user;

-- The relay's login: the log, channel decisions and visitor secrets.
\c - campfire_test_attacker_relay
-- (A service_role claim gives it nothing: it is not a campfire_service login.)
SELECT campfire.authorize_channel('org:aaaaaaaa-0000-4000-8000-00000000000a', '{"role":"service_role"}') ->> 'reason'
    AS service_claim_through_a_relay_login;
CALL t.plant();
SELECT a.call, a.result FROM t.attack('hijack') a
WHERE a.call IN ('authorize_channel', 'read_log', 'log_head', 'visitor_claims', 'send_message');
SELECT * FROM t.hijacked();
SELECT rolsuper AS became_superuser FROM pg_catalog.pg_roles WHERE rolname = session_user;

-- A service login (campfire_service): organizations, custom events, pruning, erasure.
\c - campfire_test_attacker_service
CALL t.plant();
SELECT a.call, a.result FROM t.attack('service') a;
SELECT * FROM t.hijacked();
SELECT rolsuper AS became_superuser FROM pg_catalog.pg_roles WHERE rolname = session_user;

\c - postgres
SELECT rolname, rolsuper FROM pg_catalog.pg_roles WHERE rolname LIKE 'campfire_test_attacker%' ORDER BY 1;
