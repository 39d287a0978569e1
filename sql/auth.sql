-- Who is asking: claims, roles and the helpers that row-level security policies call.
--
-- Claims are set per transaction, as PostgREST and Supabase do:
--   SELECT set_config('request.jwt.claims', '{"role":"authenticated","sub":"<user uuid>"}', true);
-- Roles in the claims:
--   authenticated : an agent; sees the organizations it is an active member of, with its role
--                   (admin | agent | viewer) limiting writes.
--   visitor       : a widget visitor ({"role":"visitor","widget_session_id":"<uuid>"}); sees only
--                   its own widget session's conversations and messages.
--   service_role  : everything, but only for sessions whose login role is a member of
--                   campfire_service (a claim alone is not enough).
-- Anything else, or no claims, sees nothing.
-- Whoever can set claims is trusted to have verified them: grant campfire_client only to
-- backends (the relay, an application server), never to end users.

CREATE FUNCTION current_claims() RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN coalesce(nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb, '{}'::jsonb);

-- Policies and the API read claims through campfire.claim(key) (Rust, claims.rs): jsonb's own
-- current_claims() ->> key, with the parsed jsonb kept while the setting's text stays the same
-- (a message asks for the role several times).
CREATE FUNCTION claim_role() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN campfire.claim('role');

-- try_uuid(text) (Rust, claims.rs): a uuid from text, or NULL when the text is not one.

-- is_service() (Rust, claims.rs): the claims' role is service_role and session_user is a member
-- of campfire_service.

CREATE FUNCTION current_user_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN CASE WHEN campfire.claim_role() = 'authenticated'
                THEN campfire.try_uuid(campfire.claim('sub')) END;

-- The helpers below run for nearly every statement (row-level security asks them), so they are
-- Rust (row_access.rs), each one kept statement with the owner's rights: as PL/pgSQL each call
-- built its expressions' state again in every transaction, and as SQL functions their bodies were
-- parsed and planned at every call. Each reads the caller's ids from the claims once, not in the
-- query: a scan of a small table parsed the claims for every row it visited.

-- The caller's widget session, if the claims name one that is neither revoked nor expired.
CREATE FUNCTION current_widget_session_id() RETURNS uuid
    LANGUAGE c STABLE SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS 'MODULE_PATHNAME', 'current_widget_session_id_wrapper';

-- Organizations where the caller is an active member with at least `min_role`
-- (viewer < agent < admin). Policies call it once per query: `= ANY ((SELECT ...))`.
CREATE FUNCTION member_organizations(min_role text DEFAULT 'viewer') RETURNS uuid[]
    LANGUAGE c STABLE SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS 'MODULE_PATHNAME', 'member_organizations_wrapper';

-- The caller's role in the organization, if it is an active member.
CREATE FUNCTION member_role(organization_id uuid) RETURNS text
    LANGUAGE c STABLE SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS 'MODULE_PATHNAME', 'member_role_wrapper';

CREATE FUNCTION is_org_member(organization_id uuid) RETURNS boolean
    LANGUAGE sql STABLE
    RETURN campfire.member_role(organization_id) IS NOT NULL;

-- Whether the caller is an active member of the organization with at least `min_role`.
-- Never NULL, so `IF NOT (...)` checks cannot be slipped past.
CREATE FUNCTION has_org_role(organization_id uuid, min_role text) RETURNS boolean
    LANGUAGE sql STABLE
    RETURN coalesce(organization_id = ANY (campfire.member_organizations(min_role)), false);

-- The conversations of the caller's widget session (empty for anyone but a visitor).
CREATE FUNCTION visitor_conversations() RETURNS uuid[]
    LANGUAGE c STABLE SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS 'MODULE_PATHNAME', 'visitor_conversations_wrapper';

-- The organization of a conversation of the caller's widget session, NULL for any other: how a
-- visitor's API call finds its conversation (visible_conversation_org).
CREATE FUNCTION visitor_conversation_org(conversation_id uuid) RETURNS uuid
    LANGUAGE c STABLE SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS 'MODULE_PATHNAME', 'visitor_conversation_org_wrapper';

-- May the caller insert this message? The messages_insert policy, and the check that runs before
-- the owner's seq trigger reads or locks the conversation (triggers.sql). It runs with the
-- owner's rights to read the caller's conversations or organizations without a statement of its
-- own, and decides from its arguments and the caller's claims and login alone.
CREATE FUNCTION may_insert_message(organization_id uuid, conversation_id uuid, sender_type text,
                                   message_type text, sender_user_id uuid) RETURNS boolean
    LANGUAGE c STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS 'MODULE_PATHNAME', 'may_insert_message_wrapper';

-- The key that seals notifications, made on first use: the extension seals with it (as the
-- owner), the relays open and seal with it (campfire_relay may call this, nobody else).
CREATE FUNCTION notify_key() RETURNS bytea
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp
    AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM campfire.notify_keys) THEN
        INSERT INTO campfire.notify_keys (notify_key) VALUES (campfire.random_bytes(32)) ON CONFLICT DO NOTHING;
    END IF;
    RETURN (SELECT k.notify_key FROM campfire.notify_keys k);
END
$$;

-- May the holder of `claims` read, broadcast on, and track presence on `topic`?
-- Returns {"read", "broadcast", "presence", "reason", "topic"} where topic is the canonical
-- channel name events are published under. A malformed name raises SQLSTATE 22023.
CREATE FUNCTION authorize_channel(topic text, claims jsonb) RETURNS jsonb
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
