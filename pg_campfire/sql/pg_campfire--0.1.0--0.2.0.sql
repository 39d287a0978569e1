-- pg_campfire 0.1.0 -> 0.2.0: everything that changed since release 0.1.0 (commit 05918c5).
SET LOCAL search_path TO campfire, pg_catalog;

-- 0.1.0 sat in schema campfire, which CREATE EXTENSION made before running the script, so the
-- schema was no member and DROP EXTENSION left it behind; and a schema that holds an extension
-- cannot become one of its members. 0.2.0 sits in pg_catalog and owns campfire. No command moves
-- a non-relocatable extension, hence the catalog update (the script runs as a superuser).
UPDATE pg_catalog.pg_extension SET extnamespace = 'pg_catalog'::pg_catalog.regnamespace
 WHERE extname = 'pg_campfire';
-- pg_catalog is pinned: an extension in it records no dependency on its schema.
DELETE FROM pg_catalog.pg_depend d
 USING pg_catalog.pg_extension e
 WHERE d.classid = 'pg_catalog.pg_extension'::pg_catalog.regclass AND d.objid = e.oid AND e.extname = 'pg_campfire'
   AND d.refclassid = 'pg_catalog.pg_namespace'::pg_catalog.regclass;
ALTER EXTENSION pg_campfire ADD SCHEMA campfire;

-- Events are flushed at pre-commit by the library, never by a deferred trigger that SET
-- CONSTRAINTS ALL IMMEDIATE could fire early (and hold the log's lock while the transaction stays
-- open).
DROP TRIGGER organization_members_flush_events ON organization_members;
DROP TRIGGER conversations_flush_events ON conversations;
DROP TRIGGER messages_flush_events ON messages;
DROP TRIGGER conversation_reads_flush_events ON conversation_reads;

-- No queue and no second write: each transaction logs its events itself at pre-commit, with a
-- block of ids it announces in shared memory until its commit is visible, and readers read up
-- to the log's horizon, below which every id is settled. Events a 0.1.0 server queued and its
-- sequencer had not logged yet go to the log now, in queue order.
CREATE FUNCTION log_horizon() RETURNS bigint
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'log_horizon_wrapper';
ALTER FUNCTION log_horizon() SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp;
REVOKE EXECUTE ON FUNCTION log_horizon() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION log_horizon() TO campfire_client, campfire_relay;
INSERT INTO events (id, organization_id, conversation_id, topic, event, payload)
SELECT nextval('campfire.events_id_seq'::regclass), q.organization_id, q.conversation_id, q.topic, q.event, q.payload
FROM event_queue q ORDER BY q.id;
-- Out of the extension first, which also takes them out of its dump configuration.
ALTER EXTENSION pg_campfire DROP SEQUENCE event_queue_id_seq;
ALTER EXTENSION pg_campfire DROP TABLE event_queue;
DROP TABLE event_queue;

-- updated_at is set in Rust (triggers.rs), with no WHEN clause for PostgreSQL to read back and
-- plan in every statement.
CREATE OR REPLACE FUNCTION touch_updated_at() RETURNS trigger
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'touch_updated_at_wrapper';

-- Indexes for row-level security and the log's readers and retention.
CREATE INDEX conversations_widget_session_idx ON conversations (widget_session_id);
CREATE INDEX events_organization_idx ON events (organization_id, id);
CREATE INDEX events_created_at_idx ON events USING brin (created_at) WITH (pages_per_range = 16, autosummarize = on);

-- Owner's-rights code pins pg_temp last; PL/pgSQL declarations are schema-qualified; the RLS
-- helpers are PL/pgSQL (plans kept per session); "not yours" and "does not exist" answer alike.
ALTER FUNCTION flush_events() SET search_path = pg_catalog, campfire, pg_temp;
ALTER FUNCTION sync_realtime_conversations() SET search_path = pg_catalog, campfire, pg_temp;
ALTER FUNCTION broadcast(uuid, text, text, jsonb) SET search_path = pg_catalog, campfire, pg_temp;

-- Claims are read through campfire.claim(key), which keeps the parsed claims while the
-- setting's text stays the same (a message asked for them several times, parsing each time),
-- and is_service(), require_role() and try_uuid() are Rust too (try_uuid's regex with bounded
-- repetitions rebuilt its automaton at every match).
CREATE FUNCTION claim("key" text) RETURNS text
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'claim_wrapper';
REVOKE EXECUTE ON FUNCTION claim(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION claim(text) TO campfire_client;
CREATE OR REPLACE FUNCTION is_service() RETURNS boolean
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'is_service_wrapper';
CREATE OR REPLACE FUNCTION try_uuid("value" text) RETURNS uuid
STRICT IMMUTABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'try_uuid_wrapper';
CREATE OR REPLACE FUNCTION require_role() RETURNS text
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'require_role_wrapper';
CREATE OR REPLACE FUNCTION claim_role() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN campfire.claim('role');
CREATE OR REPLACE FUNCTION current_user_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN CASE WHEN campfire.claim_role() = 'authenticated'
                THEN campfire.try_uuid(campfire.claim('sub')) END;

-- The helpers row-level security asks on nearly every statement in Rust (row_access.rs), one
-- kept statement each: a message asks five times or more, and as PL/pgSQL (and SQL functions in
-- 0.1.0) each call built its expressions' state again, or planned its body, and a visitor's
-- called a second function for its session.
CREATE OR REPLACE FUNCTION current_widget_session_id() RETURNS uuid
    LANGUAGE c STABLE SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS 'MODULE_PATHNAME', 'current_widget_session_id_wrapper';

CREATE OR REPLACE FUNCTION member_organizations(min_role text DEFAULT 'viewer') RETURNS uuid[]
    LANGUAGE c STABLE SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS 'MODULE_PATHNAME', 'member_organizations_wrapper';

CREATE OR REPLACE FUNCTION member_role(organization_id uuid) RETURNS text
    LANGUAGE c STABLE SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS 'MODULE_PATHNAME', 'member_role_wrapper';

CREATE OR REPLACE FUNCTION visitor_conversations() RETURNS uuid[]
    LANGUAGE c STABLE SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS 'MODULE_PATHNAME', 'visitor_conversations_wrapper';

-- How a visitor's API call finds its conversation (visible_conversation_org), where the
-- visitor-safe view also read the conversation's last message.
CREATE FUNCTION visitor_conversation_org(conversation_id uuid) RETURNS uuid
    LANGUAGE c STABLE SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS 'MODULE_PATHNAME', 'visitor_conversation_org_wrapper';

-- With the owner's rights, to read the caller's conversations or organizations without a statement
-- of its own; it decides from its arguments and the caller's claims and login alone.
CREATE OR REPLACE FUNCTION may_insert_message(organization_id uuid, conversation_id uuid, sender_type text,
                                   message_type text, sender_user_id uuid) RETURNS boolean
    LANGUAGE c STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS 'MODULE_PATHNAME', 'may_insert_message_wrapper';

CREATE OR REPLACE FUNCTION authorize_channel(topic text, claims jsonb) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS $$
DECLARE
    channel record;
    role pg_catalog.text := claims ->> 'role';
    membership pg_catalog.text;
    session campfire.widget_sessions;
    conversation_session pg_catalog.uuid;
    conversation_exists boolean;
    may_read boolean := false;
    may_broadcast boolean := false;
    may_presence boolean := false;
    reason pg_catalog.text;
BEGIN
    SELECT * INTO channel FROM campfire.parse_channel(topic);
    -- Whose conversation the channel names (existence is only revealed to those who pass).
    IF channel.conversation_id IS NOT NULL THEN
        SELECT c.widget_session_id INTO conversation_session
        FROM campfire.conversations c
        WHERE c.id = channel.conversation_id AND c.organization_id = channel.organization_id;
        conversation_exists := FOUND;
    END IF;

    IF role = 'service_role' THEN
        -- As campfire.is_service(): the claim gives service power only to a campfire_service
        -- login (session_user stays the caller's login inside this function).
        IF pg_catalog.pg_has_role(session_user, 'campfire_service', 'MEMBER') THEN
            may_read := true; may_broadcast := true; may_presence := true;
        ELSE
            reason := 'service_role claims act only for a database login that is a member of campfire_service';
        END IF;
    ELSIF role = 'authenticated' THEN
        SELECT m.role INTO membership FROM campfire.organization_members m
        WHERE m.organization_id = channel.organization_id
          AND m.user_id = campfire.try_uuid(claims ->> 'sub') AND m.status = 'active';
        IF membership IS NULL THEN
            reason := format('user %s is not an active member of organization %s',
                             coalesce(claims ->> 'sub', '(no sub claim)'), channel.organization_id);
        ELSE
            may_read := true;
            may_presence := channel.kind IN ('agents_presence', 'conversation_presence');
            -- Viewers watch; only admins and agents speak (typing).
            may_broadcast := membership <> 'viewer'
                             AND channel.kind IN ('conversation_typing', 'conversation_presence', 'agents_presence');
        END IF;
    ELSIF role = 'visitor' THEN
        SELECT * INTO session FROM campfire.widget_sessions s
        WHERE s.id = campfire.try_uuid(claims ->> 'widget_session_id')
          AND s.revoked_at IS NULL AND s.expires_at > now();
        IF NOT FOUND THEN
            reason := 'the widget session is unknown, revoked or expired';
        ELSIF session.organization_id <> channel.organization_id THEN
            reason := 'the channel belongs to another organization than the widget session';
        ELSIF channel.kind IN ('conversation', 'conversation_typing', 'conversation_presence') THEN
            IF conversation_session IS DISTINCT FROM session.id THEN
                reason := 'visitors may only join their own conversation';
            ELSE
                may_read := true;
                may_broadcast := channel.kind IN ('conversation_typing', 'conversation_presence');
                may_presence := channel.kind = 'conversation_presence';
            END IF;
        ELSIF channel.kind = 'widget_session' THEN
            may_read := channel.widget_session_id = session.id;
            reason := CASE WHEN NOT may_read THEN 'visitors may only join their own widget session channel' END;
        ELSIF channel.kind = 'widget_visitor' THEN
            may_read := channel.visitor_id = session.visitor_id;
            reason := CASE WHEN NOT may_read THEN 'visitors may only join their own visitor channel' END;
        ELSIF channel.kind = 'agents_presence' THEN
            -- Read-only: lets the widget show whether an agent is online.
            may_read := true;
        ELSE
            reason := 'visitors may not join organization-wide channels';
        END IF;
    ELSE
        reason := format('claims carry no usable role (%s): expected authenticated, visitor or service_role',
                         coalesce(role, 'none'));
    END IF;

    IF may_read AND channel.conversation_id IS NOT NULL AND NOT conversation_exists THEN
        may_read := false; may_broadcast := false; may_presence := false;
        reason := format('conversation %s does not exist in organization %s',
                         channel.conversation_id, channel.organization_id);
    END IF;

    RETURN jsonb_build_object('read', may_read, 'broadcast', may_broadcast, 'presence', may_presence,
                              'reason', reason, 'topic', channel.canonical);
END
$$;

-- Refuses, before messages_assign_seq (the owner's) reads or locks the conversation, a message
-- the caller's row-level security would refuse anyway (Rust, row_access.rs; the caller's rights).
CREATE OR REPLACE FUNCTION admit_message() RETURNS trigger
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'admit_message_wrapper';

-- The same rules in Rust (message_seq.rs), with plans kept for the session, and a retry found
-- without taking the conversation's lock first.
CREATE OR REPLACE FUNCTION assign_message_seq() RETURNS trigger
    LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS 'MODULE_PATHNAME', 'assign_message_seq_wrapper';

CREATE TRIGGER messages_admit BEFORE INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION admit_message();

-- Visitors read their conversations through this view, no longer through the mirror.
CREATE VIEW widget_conversations WITH (security_barrier) AS
    SELECT c.id, c.organization_id, c.widget_session_id, c.visitor_id, c.customer_name, c.customer_email,
           c.status::text AS status, c.created_at,
           coalesce(last.seq, 0) AS last_message_seq, last.created_at AS last_message_at,
           left(last.content, 140) AS last_message_preview, last.sender_type AS last_message_sender_type
    FROM campfire.conversations c
    LEFT JOIN LATERAL (
        SELECT m.seq, m.created_at, m.content, m.sender_type FROM campfire.messages m
        WHERE m.conversation_id = c.id AND m.message_type <> 'note'
        ORDER BY m.seq DESC LIMIT 1) last ON true
    WHERE c.id = ANY ((SELECT campfire.visitor_conversations())::uuid[]);

CREATE OR REPLACE FUNCTION create_organization(name text, slug text, allowed_origins text[] DEFAULT '{}')
    RETURNS uuid
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_variable
DECLARE
    created pg_catalog.uuid;
BEGIN
    IF NOT campfire.is_service() THEN
        PERFORM campfire.raise_error('42501', 'only the service role may create organizations');
    END IF;
    IF slug IS NULL OR NOT campfire.is_valid_slug(slug) THEN
        PERFORM campfire.raise_error('22023', 'slug must be 2-63 characters of a-z, 0-9 and -, starting with a letter or digit');
    END IF;
    IF name IS NULL OR length(btrim(name)) NOT BETWEEN 1 AND 200 THEN
        PERFORM campfire.raise_error('22023', 'name must be 1-200 characters');
    END IF;
    INSERT INTO campfire.organizations (name, slug, allowed_origins)
    VALUES (name, slug, coalesce(allowed_origins, '{}'))
    RETURNING id INTO created;
    RETURN created;
EXCEPTION WHEN unique_violation THEN
    PERFORM campfire.raise_error('23505', format('an organization with slug %s already exists', slug));
END
$$;

CREATE OR REPLACE FUNCTION set_availability(organization_id uuid, availability text)
    RETURNS campfire.organization_members
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS $$
#variable_conflict use_variable
DECLARE
    member campfire.organization_members;
BEGIN
    IF campfire.require_role() <> 'authenticated' OR campfire.current_user_id() IS NULL THEN
        PERFORM campfire.raise_error('42501', 'only an agent (role authenticated with a sub) has an availability');
    END IF;
    IF availability IS NULL OR availability NOT IN ('online', 'away', 'offline') THEN
        PERFORM campfire.raise_error('22023', 'availability must be one of online, away, offline');
    END IF;
    UPDATE campfire.organization_members m
       SET availability = set_availability.availability,
           availability_changed_at = CASE WHEN m.availability = set_availability.availability
                                          THEN m.availability_changed_at ELSE now() END
     WHERE m.organization_id = set_availability.organization_id
       AND m.user_id = campfire.current_user_id() AND m.status = 'active'
    RETURNING * INTO member;
    IF NOT FOUND THEN
        PERFORM campfire.raise_error('42501',
            format('user %s is not an active member of organization %s', campfire.current_user_id(), organization_id));
    END IF;
    RETURN member;
END
$$;

CREATE OR REPLACE FUNCTION session_by_secret(session_secret text) RETURNS campfire.widget_sessions
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS $$
DECLARE
    session campfire.widget_sessions;
BEGIN
    SELECT s.* INTO session FROM campfire.widget_sessions s, campfire.server_keys k
    WHERE s.id = campfire.widget_secret_session(session_secret)
      AND campfire.widget_secret_matches(k.widget_key, s.id, s.secret_nonce, session_secret);
    IF NOT FOUND OR session.revoked_at IS NOT NULL OR session.expires_at <= now() THEN
        PERFORM campfire.raise_error('28000', 'the widget session secret is invalid, revoked or expired',
            'start a new session without a secret');
    END IF;
    RETURN session;
END
$$;

CREATE OR REPLACE FUNCTION start_widget_session(organization_id uuid, visitor_id text,
                                     customer_email text DEFAULT NULL, customer_name text DEFAULT NULL,
                                     resume_secret text DEFAULT NULL)
    RETURNS TABLE (conversation_id uuid, widget_session_id uuid, session_secret text)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    org campfire.organizations;
    session campfire.widget_sessions;
    conversation pg_catalog.uuid;
    claim_window constant interval := interval '60 seconds';
BEGIN
    IF start_widget_session.organization_id IS NULL THEN
        PERFORM campfire.raise_error('22023', 'organization_id is required');
    END IF;
    IF start_widget_session.visitor_id IS NULL OR NOT campfire.is_valid_visitor_id(start_widget_session.visitor_id) THEN
        PERFORM campfire.raise_error('22023', 'visitor_id must be 1-128 characters of A-Z a-z 0-9 . _ -');
    END IF;
    PERFORM campfire.validate_email(start_widget_session.customer_email, 'customer_email');
    IF length(start_widget_session.customer_name) > 200 THEN
        PERFORM campfire.raise_error('22001', 'customer_name is longer than 200 characters');
    END IF;
    SELECT * INTO org FROM campfire.organizations o WHERE o.id = start_widget_session.organization_id;
    IF NOT FOUND THEN
        PERFORM campfire.raise_error('P0002', format('organization %s not found', start_widget_session.organization_id));
    END IF;

    IF start_widget_session.resume_secret IS NOT NULL THEN
        session := campfire.session_by_secret(start_widget_session.resume_secret);
        IF session.organization_id <> org.id OR session.visitor_id <> start_widget_session.visitor_id THEN
            PERFORM campfire.raise_error('28000', 'the widget session secret belongs to another visitor');
        END IF;
        UPDATE campfire.widget_sessions s
           SET last_seen_at = now(), expires_at = now() + interval '30 days',
               customer_email = coalesce(start_widget_session.customer_email, s.customer_email),
               customer_name = coalesce(start_widget_session.customer_name, s.customer_name)
         WHERE s.id = session.id;
    ELSE
        INSERT INTO campfire.widget_sessions (organization_id, visitor_id, secret_nonce, customer_email, customer_name)
        VALUES (org.id, start_widget_session.visitor_id, campfire.random_bytes(16),
                start_widget_session.customer_email, start_widget_session.customer_name)
        ON CONFLICT (organization_id, visitor_id) DO NOTHING
        RETURNING * INTO session;
        IF NOT FOUND THEN
            SELECT * INTO session FROM campfire.widget_sessions s
            WHERE s.organization_id = org.id AND s.visitor_id = start_widget_session.visitor_id;
            IF session.created_at < now() - claim_window OR session.revoked_at IS NOT NULL THEN
                PERFORM campfire.raise_error('28000',
                    format('visitor %s already has a widget session', start_widget_session.visitor_id),
                    'present its session_secret to resume it');
            END IF;
        END IF;
    END IF;

    SELECT c.id INTO conversation FROM campfire.conversations c
    WHERE c.widget_session_id = session.id AND c.status <> 'resolved';
    IF NOT FOUND THEN
        INSERT INTO campfire.conversations AS c (organization_id, widget_session_id, visitor_id,
                                                 customer_name, customer_email, status)
        VALUES (org.id, session.id, session.visitor_id,
                coalesce(start_widget_session.customer_name, session.customer_name),
                coalesce(start_widget_session.customer_email, session.customer_email),
                CASE WHEN (org.settings ->> 'bot_enabled')::boolean THEN 'bot' ELSE 'open' END::campfire.conversation_status)
        ON CONFLICT (widget_session_id) WHERE status <> 'resolved' AND widget_session_id IS NOT NULL DO NOTHING
        RETURNING c.id INTO conversation;
        IF NOT FOUND THEN
            SELECT c.id INTO conversation FROM campfire.conversations c
            WHERE c.widget_session_id = session.id AND c.status <> 'resolved';
        END IF;
    END IF;

    RETURN QUERY
        SELECT conversation, session.id, campfire.widget_secret(campfire.server_key(), session.id, session.secret_nonce);
END
$$;

CREATE OR REPLACE FUNCTION visitor_claims(session_secret text) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS $$
DECLARE
    session campfire.widget_sessions := campfire.session_by_secret(session_secret);
BEGIN
    RETURN jsonb_build_object('role', 'visitor', 'org_id', session.organization_id,
                              'widget_session_id', session.id, 'visitor_id', session.visitor_id);
END
$$;

CREATE OR REPLACE FUNCTION revoke_widget_session(widget_session_id uuid) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS $$
#variable_conflict use_variable
DECLARE
    org pg_catalog.uuid;
BEGIN
    -- Only a session the caller may see is found (as its row-level security would have it), so
    -- "not yours" and "does not exist" get the same answer.
    SELECT s.organization_id INTO org FROM campfire.widget_sessions s
    WHERE s.id = widget_session_id
      AND (campfire.is_service() OR campfire.has_org_role(s.organization_id, 'viewer')
           OR s.id = campfire.current_widget_session_id());
    IF NOT FOUND THEN
        PERFORM campfire.raise_error('P0002', format('widget session %s not found', widget_session_id));
    END IF;
    IF NOT (campfire.is_service() OR campfire.has_org_role(org, 'agent')
            OR coalesce(campfire.current_widget_session_id() = widget_session_id, false)) THEN
        PERFORM campfire.raise_error('42501', 'not allowed to revoke this widget session');
    END IF;
    UPDATE campfire.widget_sessions s SET revoked_at = now(), secret_nonce = campfire.random_bytes(16)
     WHERE s.id = widget_session_id;
    RETURN true;
END
$$;

-- Both in Rust now (send_message.rs), with the same errors: as PL/pgSQL, send_message's checks
-- and helpers cost more than the insert's own statement around it.
CREATE OR REPLACE FUNCTION visible_conversation_org(conversation_id uuid) RETURNS uuid
    LANGUAGE c STABLE
    AS 'MODULE_PATHNAME', 'visible_conversation_org_wrapper';

CREATE OR REPLACE FUNCTION send_message(conversation_id uuid, content text, sender_type text DEFAULT NULL,
                                        client_message_id text DEFAULT NULL, message_type text DEFAULT 'text',
                                        sender_name text DEFAULT NULL, sender_email text DEFAULT NULL,
                                        metadata jsonb DEFAULT '{}', attachments jsonb DEFAULT '[]')
    RETURNS campfire.messages
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'send_message_wrapper';

-- send_message checks its content inline (PERFORM of the helper was a query per message).
DROP FUNCTION validate_content(text);

CREATE OR REPLACE FUNCTION mark_read(conversation_id uuid, up_to_seq bigint DEFAULT NULL) RETURNS bigint
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_variable
DECLARE
    role pg_catalog.text := campfire.require_role();
    org pg_catalog.uuid := campfire.visible_conversation_org(conversation_id);
    newest bigint;
    reader_kind pg_catalog.text;
    reader pg_catalog.uuid;
    watermark bigint;
BEGIN
    IF up_to_seq IS NOT NULL AND up_to_seq < 0 THEN
        PERFORM campfire.raise_error('22023', 'up_to_seq must not be negative');
    END IF;
    IF role = 'visitor' THEN
        reader_kind := 'customer';
        reader := campfire.current_widget_session_id();
    ELSIF role = 'authenticated' THEN
        reader_kind := 'agent';
        reader := campfire.current_user_id();
    ELSE
        PERFORM campfire.raise_error('42501', 'only a visitor or an agent has a read watermark');
    END IF;
    -- The newest message the caller may read: for a visitor, never an agent-only note.
    SELECT coalesce(max(m.seq), 0) INTO newest FROM (
        SELECT m.seq FROM campfire.messages m WHERE m.conversation_id = mark_read.conversation_id
        ORDER BY m.seq DESC LIMIT 1) m;
    INSERT INTO campfire.conversation_reads AS r (organization_id, conversation_id, reader_type, reader_id, last_read_seq)
    VALUES (org, conversation_id, reader_kind, reader, least(coalesce(up_to_seq, newest), newest))
    ON CONFLICT ON CONSTRAINT conversation_reads_pkey DO UPDATE
        SET last_read_seq = EXCLUDED.last_read_seq, updated_at = now()
        WHERE r.last_read_seq < EXCLUDED.last_read_seq;
    SELECT r.last_read_seq INTO watermark FROM campfire.conversation_reads r
    WHERE r.conversation_id = mark_read.conversation_id AND r.reader_type = reader_kind AND r.reader_id = reader;
    RETURN watermark;
END
$$;

CREATE OR REPLACE FUNCTION writable_conversation_org(conversation_id uuid) RETURNS uuid
    LANGUAGE plpgsql STABLE
    AS $$
DECLARE
    org pg_catalog.uuid;
BEGIN
    PERFORM campfire.require_role();
    org := campfire.visible_conversation_org(conversation_id);
    IF NOT (campfire.is_service() OR campfire.has_org_role(org, 'agent')) THEN
        PERFORM campfire.raise_error('42501', 'only admins and agents of the organization may change conversations');
    END IF;
    RETURN org;
END
$$;

CREATE OR REPLACE FUNCTION assign_conversation(conversation_id uuid, assignee_id uuid)
    RETURNS campfire.realtime_conversations
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_variable
DECLARE
    org pg_catalog.uuid;
BEGIN
    org := campfire.writable_conversation_org(conversation_id);
    IF assignee_id IS NOT NULL AND NOT EXISTS (
        SELECT FROM campfire.organization_members m
        WHERE m.organization_id = org AND m.user_id = assignee_id
          AND m.status = 'active' AND m.role IN ('admin', 'agent')) THEN
        PERFORM campfire.raise_error('22023',
            format('user %s is not an active admin or agent of organization %s', assignee_id, org));
    END IF;
    UPDATE campfire.conversations c
       SET assigned_to = assignee_id,
           assigned_at = CASE WHEN assignee_id IS NULL THEN NULL ELSE now() END,
           status = CASE WHEN assignee_id IS NOT NULL AND c.status IN ('bot', 'pending') THEN 'open' ELSE c.status END
     WHERE c.id = conversation_id;
    RETURN campfire.conversation_view(conversation_id);
END
$$;

CREATE OR REPLACE FUNCTION claim_conversation(conversation_id uuid)
    RETURNS campfire.realtime_conversations
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_variable
DECLARE
    org pg_catalog.uuid;
    me pg_catalog.uuid := campfire.current_user_id();
BEGIN
    PERFORM campfire.require_role();
    org := campfire.visible_conversation_org(conversation_id);
    IF me IS NULL OR coalesce(campfire.member_role(org), 'viewer') = 'viewer' THEN
        PERFORM campfire.raise_error('42501', 'only an admin or agent of the organization may claim a conversation');
    END IF;
    UPDATE campfire.conversations c
       SET status = 'open', assigned_to = me, assigned_at = now()
     WHERE c.id = conversation_id AND c.status IN ('bot', 'pending') AND c.assigned_to IS NULL;
    IF NOT FOUND THEN
        PERFORM campfire.raise_error('55000',
            format('conversation %s is not waiting for an agent (already claimed or not handed over)', conversation_id));
    END IF;
    RETURN campfire.conversation_view(conversation_id);
END
$$;

-- One log row for a new message's conversation update and its event on the conversation list
-- (both for the organization's members): the row holds two ids, read back as the two events.
ALTER TABLE events ADD COLUMN conversation_update json;
-- The events one log row delivers, in id order (see conversation_update).
CREATE FUNCTION deliveries(e events) RETURNS SETOF events
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT e.id OPERATOR(pg_catalog.+) k, e.organization_id, e.conversation_id,
           CASE WHEN k OPERATOR(pg_catalog.<) u.n THEN 'org:' OPERATOR(pg_catalog.||) e.organization_id::pg_catalog.text ELSE e.topic END,
           CASE WHEN k OPERATOR(pg_catalog.<) u.n THEN 'conversation:updated' ELSE e.event END,
           CASE WHEN k OPERATOR(pg_catalog.<) u.n THEN e.conversation_update ELSE e.payload END,
           e.created_at, NULL::pg_catalog.json
    FROM (SELECT (e.conversation_update IS NOT NULL)::pg_catalog.int4) AS u(n), pg_catalog.generate_series(0, u.n) AS k
    $$;
-- The organization of an organization channel ('org:<uuid>'), whose events include the
-- conversation updates of its rows; NULL for any other channel.
CREATE FUNCTION channel_organization(channel text) RETURNS uuid
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN pg_catalog.length(channel) = 40 AND pg_catalog.starts_with(channel, 'org:')
                THEN campfire.try_uuid(pg_catalog.substr(channel, 5)) END;
REVOKE EXECUTE ON FUNCTION deliveries(events), channel_organization(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION deliveries(events), channel_organization(text) TO PUBLIC;

CREATE OR REPLACE FUNCTION events_since(after bigint, topic text DEFAULT NULL, max_rows integer DEFAULT 500)
    RETURNS SETOF campfire.events
    LANGUAGE plpgsql VOLATILE
    AS $$
#variable_conflict use_variable
DECLARE
    canonical pg_catalog.text;
    org pg_catalog.uuid;
    settled pg_catalog.int8 := coalesce(campfire.log_horizon(), 9223372036854775807);
    from_id pg_catalog.int8 := coalesce(after, 0);
BEGIN
    PERFORM campfire.require_role();
    IF max_rows IS NULL OR max_rows NOT BETWEEN 1 AND 10000 THEN
        PERFORM campfire.raise_error('22023', 'max_rows must be between 1 and 10000');
    END IF;
    -- Each case walks an index of what the caller may read after the cursor, never the whole log
    -- (row-level security then has little left to filter). The row at the cursor counts too when
    -- it delivers a second event after its own id: a page of max_rows rows read in full then
    -- always holds max_rows events, and a shorter one means the end of the log. A read of the
    -- whole log orders deliveries by their row, then by id: the order of their ids (a row's lie
    -- below the next row's), which leaves PostgreSQL each row's deliveries to sort rather than
    -- all of them (half the time of a page of 1,000, measured), in read_log too. Reads of some
    -- channels keep the order by id: ordered by row, a visitor's read walked the log's primary
    -- key past every other channel's rows (tests/tests/growth.rs).
    IF topic IS NOT NULL THEN
        SELECT p.canonical, campfire.channel_organization(p.canonical) INTO canonical, org FROM campfire.parse_channel(topic) p;
        IF org IS NULL THEN
            RETURN QUERY
                SELECT d.* FROM (SELECT e.* FROM campfire.events e
                                 WHERE e.topic = canonical AND e.id >= from_id AND (e.id > from_id OR e.conversation_update IS NOT NULL) AND e.id <= settled ORDER BY e.id LIMIT max_rows) e,
                     campfire.deliveries(e::campfire.events) d
                WHERE d.topic = canonical AND d.id > from_id ORDER BY d.id LIMIT max_rows;
        ELSE
            -- An organization channel: also the conversation updates its organization's rows carry.
            RETURN QUERY
                SELECT d.* FROM ((SELECT e.* FROM campfire.events e
                                  WHERE e.topic = canonical AND e.id >= from_id AND (e.id > from_id OR e.conversation_update IS NOT NULL) AND e.id <= settled ORDER BY e.id LIMIT max_rows)
                                 UNION ALL
                                 (SELECT e.* FROM campfire.events e
                                  WHERE e.organization_id = org AND e.conversation_update IS NOT NULL
                                    AND e.id > from_id AND e.id <= settled ORDER BY e.id LIMIT max_rows)) e,
                     campfire.deliveries(e::campfire.events) d
                WHERE d.topic = canonical AND d.id > from_id ORDER BY d.id LIMIT max_rows;
        END IF;
    ELSIF campfire.is_service() THEN
        RETURN QUERY
            SELECT d.* FROM (SELECT e.* FROM campfire.events e
                             WHERE e.id >= from_id AND (e.id > from_id OR e.conversation_update IS NOT NULL) AND e.id <= settled ORDER BY e.id LIMIT max_rows) e,
                 campfire.deliveries(e::campfire.events) d
            WHERE d.id > from_id ORDER BY e.id, d.id LIMIT max_rows;
    ELSIF campfire.claim_role() = 'visitor' THEN
        -- A visitor reads its conversations' channels only.
        RETURN QUERY
            SELECT d.* FROM (SELECT e.* FROM campfire.events e
                             WHERE e.topic = ANY (ARRAY(SELECT 'org:' || w.organization_id || ':conv:' || w.id
                                                        FROM campfire.widget_conversations w))
                               AND e.id >= from_id AND (e.id > from_id OR e.conversation_update IS NOT NULL) AND e.id <= settled ORDER BY e.id LIMIT max_rows) e,
                 campfire.deliveries(e::campfire.events) d
            WHERE d.id > from_id ORDER BY d.id LIMIT max_rows;
    ELSE
        RETURN QUERY
            SELECT d.* FROM (SELECT e.* FROM campfire.events e
                             WHERE e.organization_id = ANY (campfire.member_organizations('viewer'))
                               AND e.id >= from_id AND (e.id > from_id OR e.conversation_update IS NOT NULL) AND e.id <= settled ORDER BY e.id LIMIT max_rows) e,
                 campfire.deliveries(e::campfire.events) d
            WHERE d.id > from_id ORDER BY d.id LIMIT max_rows;
    END IF;
END
$$;

DROP FUNCTION read_log(bigint, integer, text); -- its channel parameter was called topic, like a column
CREATE OR REPLACE FUNCTION read_log(after bigint, max_rows integer DEFAULT 1000, channel text DEFAULT NULL)
    RETURNS TABLE (id bigint, topic text, event text, payload json)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS $$
#variable_conflict use_column
DECLARE
    settled pg_catalog.int8 := coalesce(campfire.log_horizon(), 9223372036854775807);
    max_events pg_catalog.int4 := least(greatest($2, 1), 10000);
    org pg_catalog.uuid := campfire.channel_organization($3);
BEGIN
    -- After the cursor, as in events_since. The whole log walks the log's index, one
    -- channel the channel's, and an organization channel also the organization's rows that
    -- carry a conversation update.
    IF $3 IS NULL THEN
        RETURN QUERY
            SELECT d.id, d.topic, d.event, d.payload
            FROM (SELECT e.* FROM campfire.events e
                  WHERE e.id >= $1 AND (e.id > $1 OR e.conversation_update IS NOT NULL) AND e.id <= settled ORDER BY e.id LIMIT max_events) e,
                 campfire.deliveries(e::campfire.events) d
            WHERE d.id > $1 ORDER BY e.id, d.id LIMIT max_events;
    ELSIF org IS NULL THEN
        RETURN QUERY
            SELECT d.id, d.topic, d.event, d.payload
            FROM (SELECT e.* FROM campfire.events e
                  WHERE e.topic = $3 AND e.id >= $1 AND (e.id > $1 OR e.conversation_update IS NOT NULL) AND e.id <= settled ORDER BY e.id LIMIT max_events) e,
                 campfire.deliveries(e::campfire.events) d
            WHERE d.id > $1 AND d.topic = $3 ORDER BY d.id LIMIT max_events;
    ELSE
        RETURN QUERY
            SELECT d.id, d.topic, d.event, d.payload
            FROM ((SELECT e.* FROM campfire.events e
                   WHERE e.topic = $3 AND e.id >= $1 AND (e.id > $1 OR e.conversation_update IS NOT NULL) AND e.id <= settled ORDER BY e.id LIMIT max_events)
                  UNION ALL
                  (SELECT e.* FROM campfire.events e
                   WHERE e.organization_id = org AND e.conversation_update IS NOT NULL
                     AND e.id > $1 AND e.id <= settled ORDER BY e.id LIMIT max_events)) e,
                 campfire.deliveries(e::campfire.events) d
            WHERE d.id > $1 AND d.topic = $3 ORDER BY d.id LIMIT max_events;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION log_head() RETURNS bigint
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS $$ SELECT coalesce(campfire.log_horizon(),
                          (SELECT max(d.id) FROM (SELECT e.* FROM campfire.events e ORDER BY e.id DESC LIMIT 1) e,
                                                 campfire.deliveries(e::campfire.events) d), 0) $$;

CREATE OR REPLACE FUNCTION erase_visitor(organization_id uuid, visitor_id text) RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS $$
#variable_conflict use_variable
DECLARE
    conversations pg_catalog.uuid[];
    erased_events bigint;
    erased_messages bigint;
    erased_sessions bigint;
BEGIN
    PERFORM campfire.require_role();
    IF NOT (campfire.is_service() OR campfire.has_org_role(organization_id, 'admin')) THEN
        PERFORM campfire.raise_error('42501', 'only an admin of the organization may erase a visitor');
    END IF;
    SELECT coalesce(array_agg(c.id), '{}') INTO conversations FROM campfire.conversations c
    WHERE c.organization_id = erase_visitor.organization_id AND c.visitor_id = erase_visitor.visitor_id;
    SELECT count(*) INTO erased_messages FROM campfire.messages m WHERE m.conversation_id = ANY (conversations);
    -- In this order: the conversations go first (waiting for writers in flight, which log their
    -- events before they commit, after which no new event for them can be written); then the
    -- log, in a statement that sees what those writers logged. Each statement sees what
    -- committed before it started; under REPEATABLE READ a race is a serialization error instead.
    DELETE FROM campfire.conversations c WHERE c.id = ANY (conversations);
    WITH gone AS (DELETE FROM campfire.events e WHERE e.conversation_id = ANY (conversations)
                  RETURNING 1 + (e.conversation_update IS NOT NULL)::int AS events)
    SELECT coalesce(sum(events), 0) INTO erased_events FROM gone;
    DELETE FROM campfire.widget_sessions s
    WHERE s.organization_id = erase_visitor.organization_id AND s.visitor_id = erase_visitor.visitor_id;
    GET DIAGNOSTICS erased_sessions = ROW_COUNT;
    RETURN jsonb_build_object('conversations', cardinality(conversations), 'messages', erased_messages,
                              'events', erased_events, 'sessions', erased_sessions);
END
$$;

CREATE OR REPLACE FUNCTION list_conversations(organization_id uuid, filter text DEFAULT 'all',
                                   after_updated_at timestamptz DEFAULT NULL, after_id uuid DEFAULT NULL,
                                   max_rows integer DEFAULT 50)
    RETURNS TABLE (conversation campfire.realtime_conversations, unread bigint)
    LANGUAGE plpgsql STABLE
    AS $$
#variable_conflict use_variable
DECLARE
    me pg_catalog.uuid := campfire.current_user_id();
BEGIN
    PERFORM campfire.require_role();
    IF NOT (campfire.is_service() OR campfire.has_org_role(organization_id, 'viewer')) THEN
        PERFORM campfire.raise_error('42501', format('not a member of organization %s', organization_id));
    END IF;
    IF filter IS NULL OR filter NOT IN ('all', 'mine', 'unassigned', 'bot', 'pending', 'open', 'resolved') THEN
        PERFORM campfire.raise_error('22023', 'filter must be one of all, mine, unassigned, bot, pending, open, resolved');
    END IF;
    IF max_rows IS NULL OR max_rows NOT BETWEEN 1 AND 200 THEN
        PERFORM campfire.raise_error('22023', 'max_rows must be between 1 and 200');
    END IF;
    IF (after_updated_at IS NULL) <> (after_id IS NULL) THEN
        PERFORM campfire.raise_error('22023', 'after_updated_at and after_id go together');
    END IF;
    RETURN QUERY
        SELECT r, (SELECT count(*) FROM campfire.messages m
                   WHERE m.conversation_id = r.id AND m.seq > coalesce(cr.last_read_seq, 0)
                     AND m.sender_type = 'customer')
        FROM campfire.realtime_conversations r
        LEFT JOIN campfire.conversation_reads cr
               ON cr.conversation_id = r.id AND cr.reader_type = 'agent' AND cr.reader_id = me
        WHERE r.organization_id = list_conversations.organization_id
          AND (after_id IS NULL OR (r.updated_at, r.id) < (after_updated_at, after_id))
          AND CASE filter WHEN 'all' THEN true
                          WHEN 'mine' THEN r.assigned_to = me
                          WHEN 'unassigned' THEN r.assigned_to IS NULL AND r.status <> 'resolved'
                          ELSE r.status = filter END
        ORDER BY r.updated_at DESC, r.id DESC
        LIMIT max_rows;
END
$$;

CREATE OR REPLACE FUNCTION widget_config(organization_id uuid)
    RETURNS TABLE (name text, allowed_origins text[], agents_online integer)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS $$
        SELECT o.name, o.allowed_origins,
               (SELECT count(*)::integer FROM campfire.organization_members m
                WHERE m.organization_id = o.id AND m.status = 'active' AND m.availability = 'online')
        FROM campfire.organizations o WHERE o.id = $1
    $$;

-- The server key and the log's state are written on first use, so that a restored dump's rows do
-- not collide with new ones (an installation from 0.1.0 already has both).
CREATE OR REPLACE FUNCTION server_key() RETURNS bytea
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS $$
DECLARE
    key pg_catalog.bytea;
BEGIN
    SELECT k.widget_key INTO key FROM campfire.server_keys k;
    IF NOT FOUND THEN
        INSERT INTO campfire.server_keys (widget_key) VALUES (campfire.random_bytes(32))
        ON CONFLICT (singleton) DO NOTHING;
        SELECT k.widget_key INTO STRICT key FROM campfire.server_keys k;
    END IF;
    RETURN key;
END
$$;

CREATE OR REPLACE FUNCTION log_tail() RETURNS bigint
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS $$ SELECT coalesce((SELECT s.pruned_through FROM campfire.log_state s), 0) $$;

CREATE OR REPLACE FUNCTION prune_events(older_than interval) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS $$
DECLARE
    deleted bigint;
    through bigint;
BEGIN
    IF NOT campfire.is_service() THEN
        PERFORM campfire.raise_error('42501', 'only the service role may prune the event log');
    END IF;
    WITH gone AS (DELETE FROM campfire.events e WHERE e.created_at < now() - older_than
                  RETURNING e.id + (e.conversation_update IS NOT NULL)::int AS last, 1 + (e.conversation_update IS NOT NULL)::int AS events)
    SELECT coalesce(sum(events), 0), max(last) INTO deleted, through FROM gone;
    INSERT INTO campfire.log_state AS s (pruned_through) VALUES (coalesce(through, 0))
    ON CONFLICT (singleton) DO UPDATE SET pruned_through = greatest(s.pruned_through, EXCLUDED.pruned_through);
    RETURN deleted;
END
$$;

-- Sealed notifications: the key, made on first use, that seals every NOTIFY payload, and the
-- access-change trigger in Rust, which seals with it as the owner.
CREATE TABLE notify_keys (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    notify_key bytea NOT NULL CHECK (length(notify_key) = 32)
);
ALTER TABLE notify_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE notify_keys FORCE ROW LEVEL SECURITY;
SELECT pg_catalog.pg_extension_config_dump('campfire.notify_keys', '');

CREATE OR REPLACE FUNCTION notify_key() RETURNS bytea
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM campfire.notify_keys) THEN
        INSERT INTO campfire.notify_keys (notify_key) VALUES (campfire.random_bytes(32)) ON CONFLICT DO NOTHING;
    END IF;
    RETURN (SELECT k.notify_key FROM campfire.notify_keys k);
END
$$;

CREATE OR REPLACE FUNCTION announce_access_change() RETURNS trigger
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'announce_access_change_wrapper';
ALTER FUNCTION announce_access_change() SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp;

-- Policies and grants.
ALTER POLICY realtime_conversations_read ON realtime_conversations
    USING ((SELECT campfire.is_service())
           OR organization_id = ANY ((SELECT campfire.member_organizations('viewer'))::uuid[]));
ALTER POLICY messages_insert ON messages
    WITH CHECK (campfire.may_insert_message(organization_id, conversation_id, sender_type, message_type, sender_user_id));

REVOKE ALL ON widget_conversations, notify_keys FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION may_insert_message(uuid, uuid, text, text, uuid), visitor_conversation_org(uuid),
                           admit_message(), server_key(), notify_key(),
                           announce_access_change(), read_log(bigint, integer, text) FROM PUBLIC;
GRANT SELECT ON widget_conversations TO campfire_client;
GRANT EXECUTE ON FUNCTION may_insert_message(uuid, uuid, text, text, uuid), visitor_conversation_org(uuid) TO campfire_client;
GRANT EXECUTE ON FUNCTION notify_key(), read_log(bigint, integer, text) TO campfire_relay;

-- The same identifier rules without bounded repetitions, which PostgreSQL's regex engine expands
-- into one state per repeat and rebuilds its DFA for at every match (24 µs per match; 1.5 µs this
-- way). Not STRICT, so that the planner can inline them (a strict function only inlines when its
-- body is strict too). The constraints keep their names and meaning.
CREATE OR REPLACE FUNCTION is_valid_email(email text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN length(email) <= 320 AND email ~ '^[^@[:space:]]+@[^@[:space:].]+(\.[^@[:space:].]+)+$';
CREATE OR REPLACE FUNCTION is_valid_visitor_id(visitor_id text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN length(visitor_id) <= 128 AND visitor_id ~ '^[A-Za-z0-9._-]+$';
CREATE FUNCTION is_valid_slug(slug text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN length(slug) BETWEEN 2 AND 63 AND slug ~ '^[a-z0-9][a-z0-9-]+$';
REVOKE EXECUTE ON FUNCTION is_valid_slug(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION is_valid_slug(text) TO PUBLIC;
ALTER TABLE organizations DROP CONSTRAINT organizations_slug_check,
    ADD CONSTRAINT organizations_slug_check CHECK (is_valid_slug(slug));

-- A message's rules, compiled (message_rules.rs) into one check: PostgreSQL plans a table's CHECK
-- expressions again at the start of every inserting statement, ~55 µs per message for the eight
-- SQL checks, measured. The same rules; a broken one raises 23514 naming the field.
CREATE FUNCTION is_valid_client_message_id(client_message_id text) RETURNS boolean
    LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'is_valid_client_message_id_wrapper';
CREATE FUNCTION message_fields_are_valid(content text, sender_type text, sender_name text, sender_email text,
                                         message_type text, status text, client_message_id text) RETURNS boolean
    LANGUAGE c IMMUTABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'message_fields_are_valid_wrapper';
REVOKE EXECUTE ON FUNCTION is_valid_client_message_id(text),
                           message_fields_are_valid(text, text, text, text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION is_valid_client_message_id(text),
                          message_fields_are_valid(text, text, text, text, text, text, text) TO PUBLIC;
ALTER TABLE messages DROP CONSTRAINT messages_content_check, DROP CONSTRAINT messages_sender_type_check,
    DROP CONSTRAINT messages_sender_name_check, DROP CONSTRAINT messages_sender_email_check,
    DROP CONSTRAINT messages_message_type_check, DROP CONSTRAINT messages_status_check,
    DROP CONSTRAINT messages_client_message_id_check, DROP CONSTRAINT messages_check,
    ADD CONSTRAINT messages_fields_check CHECK (message_fields_are_valid(content, sender_type, sender_name, sender_email,
                                                                         message_type, status, client_message_id));
