-- The SQL API every writer uses: the relay's HTTP endpoints, psql, an application, a bot.
-- Functions run as the caller (row-level security decides) unless they must act for someone who
-- cannot yet be identified (starting a widget session) or touch what RLS protects from the
-- caller itself (its own membership row); those are SECURITY DEFINER and check claims explicitly.
-- Errors use standard SQLSTATEs with a message saying what was wrong (README lists them).

CREATE FUNCTION raise_error(sqlstate text, message text, hint text DEFAULT NULL) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF hint IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = sqlstate, MESSAGE = message;
    END IF;
    RAISE EXCEPTION USING ERRCODE = sqlstate, MESSAGE = message, HINT = hint;
END
$$;

-- require_role() (Rust, claims.rs): the claims' role, or 28000 when they carry none.

CREATE FUNCTION validate_email(email text, field text) RETURNS void
    LANGUAGE plpgsql IMMUTABLE
    AS $$
BEGIN
    IF email IS NOT NULL AND NOT campfire.is_valid_email(email) THEN
        PERFORM campfire.raise_error('22023', format('%s is not a valid email address', field));
    END IF;
END
$$;

-- Organizations and members ------------------------------------------------------------------------

CREATE FUNCTION create_organization(name text, slug text, allowed_origins text[] DEFAULT '{}')
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

CREATE FUNCTION add_member(organization_id uuid, user_id uuid, role text DEFAULT 'agent',
                           status text DEFAULT 'active', display_name text DEFAULT NULL,
                           email text DEFAULT NULL)
    RETURNS campfire.organization_members
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_variable
DECLARE
    member campfire.organization_members;
BEGIN
    PERFORM campfire.require_role();
    IF NOT (campfire.is_service() OR campfire.has_org_role(organization_id, 'admin')) THEN
        PERFORM campfire.raise_error('42501', 'only an admin of the organization may manage its members');
    END IF;
    IF role IS NULL OR role NOT IN ('admin', 'agent', 'viewer') THEN
        PERFORM campfire.raise_error('22023', 'role must be one of admin, agent, viewer');
    END IF;
    IF status IS NULL OR status NOT IN ('active', 'invited', 'disabled') THEN
        PERFORM campfire.raise_error('22023', 'status must be one of active, invited, disabled');
    END IF;
    PERFORM campfire.validate_email(email, 'email');
    INSERT INTO campfire.organization_members AS m (organization_id, user_id, role, status, display_name, email)
    VALUES (organization_id, user_id, role, status, display_name, email)
    ON CONFLICT ON CONSTRAINT organization_members_pkey DO UPDATE
        SET role = EXCLUDED.role, status = EXCLUDED.status,
            display_name = coalesce(EXCLUDED.display_name, m.display_name),
            email = coalesce(EXCLUDED.email, m.email)
    RETURNING * INTO member;
    RETURN member;
EXCEPTION WHEN foreign_key_violation THEN
    PERFORM campfire.raise_error('P0002', format('organization %s not found', organization_id));
END
$$;

-- An agent's own availability; announces agent:status:online / agent:status:offline.
CREATE FUNCTION set_availability(organization_id uuid, availability text)
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

-- Widget sessions ---------------------------------------------------------------------------------

-- A session secret checked against the server key. Raises 28000 when it is not valid.
CREATE FUNCTION session_by_secret(session_secret text) RETURNS campfire.widget_sessions
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

-- The database's 256-bit key for widget session secrets, made when the first session starts
-- rather than by CREATE EXTENSION, so that a restored dump keeps its own key (and every secret
-- issued before the backup). Concurrent first callers wait for one insert and read its key.
CREATE FUNCTION server_key() RETURNS bytea
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

-- Starts or resumes a visitor's widget session and returns its open conversation.
-- Idempotent: the same visitor gets the same session and conversation. Without a secret, a
-- visitor that already has a session gets it back only within 60 seconds of its creation
-- (double clicks, two tabs opening at once); after that the secret is required.
CREATE FUNCTION start_widget_session(organization_id uuid, visitor_id text,
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

-- The claims a relay puts in a short-lived visitor token, for a valid session secret.
CREATE FUNCTION visitor_claims(session_secret text) RETURNS jsonb
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS $$
DECLARE
    session campfire.widget_sessions := campfire.session_by_secret(session_secret);
BEGIN
    RETURN jsonb_build_object('role', 'visitor', 'org_id', session.organization_id,
                              'widget_session_id', session.id, 'visitor_id', session.visitor_id);
END
$$;

-- Revokes a widget session: its secret stops working at once.
CREATE FUNCTION revoke_widget_session(widget_session_id uuid) RETURNS boolean
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

-- Messages ----------------------------------------------------------------------------------------

-- The organization of a conversation the caller can see, or P0002 (Rust, send_message.rs).
CREATE FUNCTION visible_conversation_org(conversation_id uuid) RETURNS uuid
    LANGUAGE c STABLE
    AS 'MODULE_PATHNAME', 'visible_conversation_org_wrapper';

-- Sends a message as the caller: a visitor sends as customer, an agent as agent (or an
-- agent-only note with message_type 'note'), the service role as whichever sender_type it names.
-- With a client_message_id, retries return the message already stored instead of a second one.
-- Rust (send_message.rs): as PL/pgSQL its checks and helpers cost more than the insert's own
-- statement around it.
CREATE FUNCTION send_message(conversation_id uuid, content text, sender_type text DEFAULT NULL,
                             client_message_id text DEFAULT NULL, message_type text DEFAULT 'text',
                             sender_name text DEFAULT NULL, sender_email text DEFAULT NULL,
                             metadata jsonb DEFAULT '{}', attachments jsonb DEFAULT '[]')
    RETURNS campfire.messages
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'send_message_wrapper';

-- Messages of a conversation the caller can see, oldest first: the newest `max_rows` before
-- `before_seq` (or the newest overall). Visitors never see agent-only notes.
CREATE FUNCTION history(conversation_id uuid, before_seq bigint DEFAULT NULL, max_rows integer DEFAULT 50)
    RETURNS SETOF campfire.messages
    LANGUAGE plpgsql STABLE
    AS $$
#variable_conflict use_variable
BEGIN
    PERFORM campfire.require_role();
    IF max_rows IS NULL OR max_rows NOT BETWEEN 1 AND 1000 THEN
        PERFORM campfire.raise_error('22023', 'max_rows must be between 1 and 1000');
    END IF;
    PERFORM campfire.visible_conversation_org(conversation_id);
    RETURN QUERY
        SELECT * FROM (
            SELECT m.* FROM campfire.messages m
            WHERE m.conversation_id = history.conversation_id
              AND (before_seq IS NULL OR m.seq < before_seq)
            ORDER BY m.seq DESC LIMIT max_rows
        ) newest ORDER BY newest.seq;
END
$$;

-- Moves the caller's read watermark forward (never back) to `up_to_seq`, or to the newest
-- message; announces read:receipt when it moved. Returns the watermark.
CREATE FUNCTION mark_read(conversation_id uuid, up_to_seq bigint DEFAULT NULL) RETURNS bigint
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

-- Conversations: assignment, handover, status ------------------------------------------------------

-- The organization of a conversation the caller may change (service, admin or agent); raises
-- 28000, P0002 or 42501 otherwise.
CREATE FUNCTION writable_conversation_org(conversation_id uuid) RETURNS uuid
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

-- The scalar mirror row of a conversation: what the conversation functions return.
CREATE FUNCTION conversation_view(conversation_id uuid) RETURNS campfire.realtime_conversations
    LANGUAGE sql STABLE
    RETURN (SELECT r FROM campfire.realtime_conversations r WHERE r.id = conversation_id);

CREATE FUNCTION assign_conversation(conversation_id uuid, assignee_id uuid)
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

-- The bot hands a conversation over to humans: it waits, 'pending', until an agent claims it.
CREATE FUNCTION request_handover(conversation_id uuid, reason text DEFAULT NULL)
    RETURNS campfire.realtime_conversations
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_variable
BEGIN
    PERFORM campfire.writable_conversation_org(conversation_id);
    UPDATE campfire.conversations c
       SET status = 'pending', handover_requested_at = now(), handover_reason = reason
     WHERE c.id = conversation_id AND c.status = 'bot';
    IF NOT FOUND THEN
        PERFORM campfire.raise_error('55000', format('conversation %s is not handled by the bot', conversation_id));
    END IF;
    RETURN campfire.conversation_view(conversation_id);
END
$$;

-- An agent takes a conversation waiting for a human (or still with the bot). Exactly one of
-- several agents claiming at once wins; the others get 55000.
CREATE FUNCTION claim_conversation(conversation_id uuid)
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

CREATE FUNCTION set_conversation_status(conversation_id uuid, status text)
    RETURNS campfire.realtime_conversations
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_variable
BEGIN
    PERFORM campfire.writable_conversation_org(conversation_id);
    IF status IS NULL OR status NOT IN ('bot', 'pending', 'open', 'resolved') THEN
        PERFORM campfire.raise_error('22023', 'status must be one of bot, pending, open, resolved');
    END IF;
    UPDATE campfire.conversations c SET status = set_conversation_status.status::campfire.conversation_status
     WHERE c.id = conversation_id;
    RETURN campfire.conversation_view(conversation_id);
EXCEPTION WHEN unique_violation THEN
    PERFORM campfire.raise_error('55000',
        format('conversation %s cannot be reopened: its visitor already has an open conversation', conversation_id));
END
$$;

-- Events ------------------------------------------------------------------------------------------

-- The organization of an organization channel ('org:<uuid>'), whose events include the
-- conversation updates of its rows; NULL for any other channel.
CREATE FUNCTION channel_organization(channel text) RETURNS uuid
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN pg_catalog.length(channel) = 40 AND pg_catalog.starts_with(channel, 'org:')
                THEN campfire.try_uuid(pg_catalog.substr(channel, 5)) END;

-- Events the caller may read, after a cursor, in cursor order; optionally one channel only.
-- This is the catch-up a client runs after any gap (and the widget's polling fallback).
-- Volatile, so that each query below takes its snapshot after the horizon is read (see read_log).
CREATE FUNCTION events_since(after bigint, topic text DEFAULT NULL, max_rows integer DEFAULT 500)
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

-- The whole log after a cursor, for the relay (which routes each event to the subscribers
-- allowed to read it), optionally one channel only (a client resuming after a gap). Only up to
-- the log's horizon, in a query whose snapshot is taken after the horizon is read (a volatile
-- function's statements each take a new one under READ COMMITTED): every id below it is then
-- either visible or rolled back, so the next read after the last id returned misses nothing.
CREATE FUNCTION read_log(after bigint, max_rows integer DEFAULT 1000, channel text DEFAULT NULL)
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

-- The cursor a reader starting now begins after: the log's horizon (0 when the log is empty).
CREATE FUNCTION log_head() RETURNS bigint
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS $$ SELECT coalesce(campfire.log_horizon(),
                          (SELECT max(d.id) FROM (SELECT e.* FROM campfire.events e ORDER BY e.id DESC LIMIT 1) e,
                                                 campfire.deliveries(e::campfire.events) d), 0) $$;

-- The id through which the log has been pruned (0 if never). A client resuming from an older cursor has missed events for good and must
-- reload history.
CREATE FUNCTION log_tail() RETURNS bigint
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS $$ SELECT coalesce((SELECT s.pruned_through FROM campfire.log_state s), 0) $$;

-- Deletes events older than `older_than`; returns how many, and records how far the log now
-- starts (log_tail). Clients further behind than the retention must reload history.
CREATE FUNCTION prune_events(older_than interval) RETURNS bigint
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

-- GDPR -------------------------------------------------------------------------------------------

-- Erases everything stored about one visitor of an organization: sessions, conversations,
-- messages, read state, and the logged events that carried them. Admins or the service role.
CREATE FUNCTION erase_visitor(organization_id uuid, visitor_id text) RETURNS jsonb
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

-- Dashboard and widget reads --------------------------------------------------------------------

-- The organization's conversations, newest activity first, for an agent's dashboard:
-- keyset-paginated by (updated_at, id) of the last row of the previous page, with the number of
-- customer messages newer than the caller's read watermark. Filter by status, or 'mine' / 'unassigned'.
CREATE FUNCTION list_conversations(organization_id uuid, filter text DEFAULT 'all',
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

-- What a visitor may know of its own conversations. The scalar mirror carries agent-only columns
-- (assignment, handover reason) and a summary that counts notes, so visitors read this view
-- instead: its summary is the last message the visitor may read. It runs with the owner's rights
-- and filters by the caller's widget session itself (empty for anyone but a visitor).
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

-- What a widget may know before it has a session: the organization's name, the origins allowed
-- to embed it, and whether an agent is online. Callable without claims.
CREATE FUNCTION widget_config(organization_id uuid)
    RETURNS TABLE (name text, allowed_origins text[], agents_online integer)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS $$
        SELECT o.name, o.allowed_origins,
               (SELECT count(*)::integer FROM campfire.organization_members m
                WHERE m.organization_id = o.id AND m.status = 'active' AND m.availability = 'online')
        FROM campfire.organizations o WHERE o.id = $1
    $$;
