-- Row-level security, privileges and dump configuration. Runs last.
--
-- Every table has RLS enabled and forced. Policies call the helpers of auth.sql once per query
-- (`(SELECT ...)` becomes an InitPlan), not once per row; the `::uuid[]` makes `= ANY` compare
-- against the array's elements rather than treat the subquery as a set of arrays.

DO $rls$
DECLARE
    t pg_catalog.text;
BEGIN
    FOREACH t IN ARRAY ARRAY['organizations', 'organization_members', 'widget_sessions', 'conversations',
                             'realtime_conversations', 'messages', 'conversation_reads', 'events', 'server_keys', 'notify_keys',
                             'log_state']
    LOOP
        EXECUTE format('ALTER TABLE campfire.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE campfire.%I FORCE ROW LEVEL SECURITY', t);
    END LOOP;
END
$rls$;

-- organizations: members read; admins update; the service role creates and deletes.
CREATE POLICY organizations_read ON organizations FOR SELECT
    USING ((SELECT campfire.is_service()) OR id = ANY ((SELECT campfire.member_organizations('viewer'))::uuid[]));
CREATE POLICY organizations_insert ON organizations FOR INSERT
    WITH CHECK ((SELECT campfire.is_service()));
CREATE POLICY organizations_update ON organizations FOR UPDATE
    USING ((SELECT campfire.is_service()) OR id = ANY ((SELECT campfire.member_organizations('admin'))::uuid[]))
    WITH CHECK ((SELECT campfire.is_service()) OR id = ANY ((SELECT campfire.member_organizations('admin'))::uuid[]));
CREATE POLICY organizations_delete ON organizations FOR DELETE
    USING ((SELECT campfire.is_service()));

-- organization_members: members read their organization's roster; admins manage it.
CREATE POLICY organization_members_read ON organization_members FOR SELECT
    USING ((SELECT campfire.is_service())
           OR organization_id = ANY ((SELECT campfire.member_organizations('viewer'))::uuid[]));
CREATE POLICY organization_members_write ON organization_members FOR ALL
    USING ((SELECT campfire.is_service())
           OR organization_id = ANY ((SELECT campfire.member_organizations('admin'))::uuid[]))
    WITH CHECK ((SELECT campfire.is_service())
                OR organization_id = ANY ((SELECT campfire.member_organizations('admin'))::uuid[]));

-- widget_sessions: members read; a visitor reads its own. Written only through the API.
CREATE POLICY widget_sessions_read ON widget_sessions FOR SELECT
    USING ((SELECT campfire.is_service())
           OR organization_id = ANY ((SELECT campfire.member_organizations('viewer'))::uuid[])
           OR id = (SELECT campfire.current_widget_session_id()));
CREATE POLICY widget_sessions_service ON widget_sessions FOR ALL
    USING ((SELECT campfire.is_service())) WITH CHECK ((SELECT campfire.is_service()));

-- conversations (with their agent-only complex columns): members read; agents and admins
-- create and change; admins delete. Visitors read the scalar mirror instead.
CREATE POLICY conversations_read ON conversations FOR SELECT
    USING ((SELECT campfire.is_service())
           OR organization_id = ANY ((SELECT campfire.member_organizations('viewer'))::uuid[]));
CREATE POLICY conversations_insert ON conversations FOR INSERT
    WITH CHECK ((SELECT campfire.is_service())
                OR organization_id = ANY ((SELECT campfire.member_organizations('agent'))::uuid[]));
CREATE POLICY conversations_update ON conversations FOR UPDATE
    USING ((SELECT campfire.is_service())
           OR organization_id = ANY ((SELECT campfire.member_organizations('agent'))::uuid[]))
    WITH CHECK ((SELECT campfire.is_service())
                OR organization_id = ANY ((SELECT campfire.member_organizations('agent'))::uuid[]));
CREATE POLICY conversations_delete ON conversations FOR DELETE
    USING ((SELECT campfire.is_service())
           OR organization_id = ANY ((SELECT campfire.member_organizations('admin'))::uuid[]));

-- realtime_conversations: read-only; written by the SECURITY DEFINER mirror trigger. Members
-- only: it carries assignment, the handover reason and a summary that counts agent-only notes.
-- Visitors read their own conversations through the widget_conversations view instead.
CREATE POLICY realtime_conversations_read ON realtime_conversations FOR SELECT
    USING ((SELECT campfire.is_service())
           OR organization_id = ANY ((SELECT campfire.member_organizations('viewer'))::uuid[]));

-- messages: members read all; a visitor reads its own conversations' messages except notes.
-- Agents and admins write as agent/system/bot; a visitor writes customer text into its own
-- conversation only.
CREATE POLICY messages_read ON messages FOR SELECT
    USING ((SELECT campfire.is_service())
           OR organization_id = ANY ((SELECT campfire.member_organizations('viewer'))::uuid[])
           OR (conversation_id = ANY ((SELECT campfire.visitor_conversations())::uuid[]) AND message_type <> 'note'));
CREATE POLICY messages_insert ON messages FOR INSERT
    WITH CHECK (campfire.may_insert_message(organization_id, conversation_id, sender_type, message_type, sender_user_id));
CREATE POLICY messages_update ON messages FOR UPDATE
    USING ((SELECT campfire.is_service())
           OR organization_id = ANY ((SELECT campfire.member_organizations('agent'))::uuid[]))
    WITH CHECK ((SELECT campfire.is_service())
                OR organization_id = ANY ((SELECT campfire.member_organizations('agent'))::uuid[]));
CREATE POLICY messages_delete ON messages FOR DELETE
    USING ((SELECT campfire.is_service())
           OR organization_id = ANY ((SELECT campfire.member_organizations('admin'))::uuid[]));

-- conversation_reads: readable like the conversation; each reader writes only its own row.
CREATE POLICY conversation_reads_read ON conversation_reads FOR SELECT
    USING ((SELECT campfire.is_service())
           OR organization_id = ANY ((SELECT campfire.member_organizations('viewer'))::uuid[])
           OR conversation_id = ANY ((SELECT campfire.visitor_conversations())::uuid[]));
CREATE POLICY conversation_reads_write ON conversation_reads FOR ALL
    USING ((SELECT campfire.is_service())
           OR (reader_type = 'agent' AND reader_id = (SELECT campfire.current_user_id())
               AND organization_id = ANY ((SELECT campfire.member_organizations('viewer'))::uuid[]))
           OR (reader_type = 'customer' AND reader_id = (SELECT campfire.current_widget_session_id())
               AND conversation_id = ANY ((SELECT campfire.visitor_conversations())::uuid[])))
    WITH CHECK ((SELECT campfire.is_service())
                OR (reader_type = 'agent' AND reader_id = (SELECT campfire.current_user_id())
                    AND organization_id = ANY ((SELECT campfire.member_organizations('viewer'))::uuid[]))
                OR (reader_type = 'customer' AND reader_id = (SELECT campfire.current_widget_session_id())
                    AND conversation_id = ANY ((SELECT campfire.visitor_conversations())::uuid[])));

-- events: members read their organizations' events; a visitor reads only its own
-- conversations' channel (where agent-only notes are never published). Written at commit by
-- flush_events (SECURITY DEFINER) only.
CREATE POLICY events_read ON events FOR SELECT
    USING ((SELECT campfire.is_service())
           OR organization_id = ANY ((SELECT campfire.member_organizations('viewer'))::uuid[])
           OR (conversation_id = ANY ((SELECT campfire.visitor_conversations())::uuid[])
               AND topic = 'org:' || organization_id || ':conv:' || conversation_id));

-- server_keys, notify_keys and log_state have no policy at all: only the owner and definer functions read them.

-- Privileges ---------------------------------------------------------------------------------------

REVOKE ALL ON ALL TABLES IN SCHEMA campfire FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA campfire FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA campfire FROM PUBLIC;

GRANT USAGE ON SCHEMA campfire TO campfire_client;
GRANT SELECT ON organizations, organization_members, widget_sessions, conversations,
                realtime_conversations, widget_conversations, messages, conversation_reads, events TO campfire_client;
GRANT INSERT, UPDATE, DELETE ON organizations, organization_members, conversations, messages TO campfire_client;
GRANT INSERT, UPDATE ON conversation_reads TO campfire_client;

-- Pure functions anyone may use.
GRANT EXECUTE ON FUNCTION scalar_json(anyelement), parse_channel(text), is_valid_visitor_id(text),
                          is_valid_email(text), is_valid_client_message_id(text), is_valid_slug(text),
                          message_fields_are_valid(text, text, text, text, text, text, text),
                          deliveries(events), channel_organization(text) TO PUBLIC;

-- What policies and the API call, and the API itself.
GRANT EXECUTE ON FUNCTION
    current_claims(), claim(text), claim_role(), try_uuid(text), is_service(), current_user_id(),
    current_widget_session_id(), member_organizations(text), member_role(uuid), is_org_member(uuid),
    has_org_role(uuid, text),
    visitor_conversations(), visitor_conversation_org(uuid), may_insert_message(uuid, uuid, text, text, uuid),
    raise_error(text, text, text), require_role(),
    validate_email(text, text), visible_conversation_org(uuid), writable_conversation_org(uuid),
    conversation_view(uuid),
    create_organization(text, text, text[]), add_member(uuid, uuid, text, text, text, text),
    set_availability(uuid, text), start_widget_session(uuid, text, text, text, text),
    revoke_widget_session(uuid),
    send_message(uuid, text, text, text, text, text, text, jsonb, jsonb),
    history(uuid, bigint, integer), mark_read(uuid, bigint),
    assign_conversation(uuid, uuid), request_handover(uuid, text), claim_conversation(uuid),
    set_conversation_status(uuid, text), events_since(bigint, text, integer), log_horizon(),
    prune_events(interval), erase_visitor(uuid, text),
    list_conversations(uuid, text, timestamptz, uuid, integer), widget_config(uuid)
TO campfire_client;

-- The relay reads the whole log and decides joins.
GRANT EXECUTE ON FUNCTION read_log(bigint, integer, text), log_head(), log_tail(), log_horizon(), authorize_channel(text, jsonb),
                          visitor_claims(text), notify_key() TO campfire_relay;

-- Custom events straight into the log.
GRANT EXECUTE ON FUNCTION broadcast(uuid, text, text, jsonb) TO campfire_service;

-- pg_dump keeps the data of an extension's tables only when asked to (one call per statement:
-- each call updates the extension's catalog row).
SELECT pg_catalog.pg_extension_config_dump('campfire.organizations', '');
SELECT pg_catalog.pg_extension_config_dump('campfire.organization_members', '');
SELECT pg_catalog.pg_extension_config_dump('campfire.widget_sessions', '');
SELECT pg_catalog.pg_extension_config_dump('campfire.conversations', '');
SELECT pg_catalog.pg_extension_config_dump('campfire.realtime_conversations', '');
SELECT pg_catalog.pg_extension_config_dump('campfire.messages', '');
SELECT pg_catalog.pg_extension_config_dump('campfire.conversation_reads', '');
SELECT pg_catalog.pg_extension_config_dump('campfire.events', '');
SELECT pg_catalog.pg_extension_config_dump('campfire.server_keys', '');
SELECT pg_catalog.pg_extension_config_dump('campfire.notify_keys', '');
SELECT pg_catalog.pg_extension_config_dump('campfire.log_state', '');
SELECT pg_catalog.pg_extension_config_dump('campfire.events_id_seq', '');

-- log_horizon reads the log's sequence, which no client role may read.
ALTER FUNCTION log_horizon() SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp;

-- broadcast writes to the log itself: it runs as the owner, for the service role only.
ALTER FUNCTION broadcast(uuid, text, text, jsonb) SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp;
