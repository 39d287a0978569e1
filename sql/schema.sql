-- pg_campfire schema: tables, types and indexes.
--
-- Every tenant table carries organization_id NOT NULL, and references between tenant tables are
-- composite (organization_id, id) so that no row can point into another organization.
-- Order is by server-assigned sequence numbers, never by timestamps.

-- The extension itself sits in pg_catalog (the control file) and creates its schema here, so that
-- the schema is one of its members and DROP EXTENSION removes it (a schema that holds an extension
-- cannot be a member of it). Everything below, and the Rust functions pgrx declares without a
-- schema, lands in the first schema of the search path; SET LOCAL lasts until the script ends.
CREATE SCHEMA campfire;
SET LOCAL search_path TO campfire, pg_catalog;

-- Group roles. Roles are cluster-wide, so they are created only when missing.
--   campfire_client  : what an application backend gets; every row it sees passes RLS.
--   campfire_relay   : the relay; campfire_client plus reading the whole event log and authorizing joins.
--   campfire_service : members may act with the 'service_role' claim (full access).
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'campfire_client') THEN
        CREATE ROLE campfire_client NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'campfire_relay') THEN
        CREATE ROLE campfire_relay NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'campfire_service') THEN
        CREATE ROLE campfire_service NOLOGIN;
    END IF;
END
$roles$;
GRANT campfire_client TO campfire_relay;
GRANT campfire_client TO campfire_service;

-- A message's rules are compiled (pg_campfire/src/message_rules.rs): the messages table's CHECK
-- runs at every one-row insert, and PostgreSQL plans a table's CHECK expressions again at the start
-- of every such statement. Declared here, before the tables, rather than by pgrx.
CREATE FUNCTION is_valid_client_message_id(client_message_id text) RETURNS boolean
    LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'is_valid_client_message_id_wrapper';
CREATE FUNCTION message_fields_are_valid(content text, sender_type text, sender_name text, sender_email text,
                                         message_type text, status text, client_message_id text) RETURNS boolean
    LANGUAGE c IMMUTABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'message_fields_are_valid_wrapper';

-- The other identifiers, checked once per widget session or organization, keep SQL rules, shared
-- by constraints and the SQL API. Lengths are checked apart from the pattern: PostgreSQL's regex
-- engine expands a bounded repetition such as {1,128} into as many states and rebuilds its DFA at
-- every match (24 µs per match, measured; 1.5 µs this way). Not STRICT, so that the planner
-- inlines them into constraints and callers (it inlines a strict function only when its body is
-- strict too, which AND is not); NULL still gives NULL.
CREATE FUNCTION is_valid_visitor_id(visitor_id text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN length(visitor_id) <= 128 AND visitor_id ~ '^[A-Za-z0-9._-]+$';
CREATE FUNCTION is_valid_slug(slug text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN length(slug) BETWEEN 2 AND 63 AND slug ~ '^[a-z0-9][a-z0-9-]+$';
CREATE FUNCTION is_valid_email(email text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN length(email) <= 320 AND email ~ '^[^@[:space:]]+@[^@[:space:].]+(\.[^@[:space:].]+)+$';

CREATE TYPE conversation_status AS ENUM ('bot', 'pending', 'open', 'resolved');
CREATE TYPE conversation_priority AS ENUM ('low', 'normal', 'high', 'urgent');

-- Tenancy -----------------------------------------------------------------------------------------

CREATE TABLE organizations (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name            text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    slug            text NOT NULL UNIQUE CHECK (is_valid_slug(slug)),
    -- Origins allowed to embed the widget (CORS); empty means any origin.
    allowed_origins text[] NOT NULL DEFAULT '{}',
    settings        jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE organization_members (
    organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    user_id         uuid NOT NULL,
    role            text NOT NULL DEFAULT 'agent' CHECK (role IN ('admin', 'agent', 'viewer')),
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'invited', 'disabled')),
    display_name    text CHECK (length(display_name) <= 200),
    email           text CHECK (length(email) <= 320),
    availability    text NOT NULL DEFAULT 'offline' CHECK (availability IN ('online', 'away', 'offline')),
    availability_changed_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, user_id)
);
-- is_org_member() looks members up by user first.
CREATE INDEX organization_members_user_idx ON organization_members (user_id, organization_id)
    WHERE status = 'active';

-- Visitors ----------------------------------------------------------------------------------------

-- One row per (organization, visitor): the visitor's credential. The per-session secret is never
-- stored: it is HMAC(server key, id || secret_nonce), so it can be checked and, during the short
-- claim window after creation, handed again to a second tab of the same visitor.
CREATE TABLE widget_sessions (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    visitor_id      text NOT NULL CHECK (is_valid_visitor_id(visitor_id)),
    secret_nonce    bytea NOT NULL,
    customer_email  text CHECK (is_valid_email(customer_email)),
    customer_name   text CHECK (length(customer_name) <= 200),
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL DEFAULT now() + interval '30 days',
    revoked_at      timestamptz,
    UNIQUE (organization_id, visitor_id),
    UNIQUE (organization_id, id)
);

-- Conversations -----------------------------------------------------------------------------------

CREATE TABLE conversations (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id       uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    widget_session_id     uuid,
    visitor_id            text,
    customer_name         text,
    customer_email        text,
    subject               text,
    -- Complex columns: never part of a realtime payload.
    customer              jsonb NOT NULL DEFAULT '{}',
    customer_ip           inet,
    tags                  text[] NOT NULL DEFAULT '{}',
    metadata              jsonb NOT NULL DEFAULT '{}',
    assignment_metadata   jsonb NOT NULL DEFAULT '{}',
    ai_metadata           jsonb NOT NULL DEFAULT '{}',
    status                conversation_status NOT NULL DEFAULT 'open',
    priority              conversation_priority NOT NULL DEFAULT 'normal',
    assigned_to           uuid,
    assigned_at           timestamptz,
    handover_requested_at timestamptz,
    handover_reason       text,
    -- Kept by the message trigger: the gap-free per-conversation message counter and a summary.
    last_message_seq      bigint NOT NULL DEFAULT 0,
    last_message_at       timestamptz,
    last_message_preview  text,
    last_message_sender_type text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, id),
    FOREIGN KEY (organization_id, widget_session_id)
        REFERENCES widget_sessions (organization_id, id) ON DELETE SET NULL (widget_session_id),
    FOREIGN KEY (organization_id, assigned_to)
        REFERENCES organization_members (organization_id, user_id) ON DELETE SET NULL (assigned_to)
);
-- At most one unresolved conversation per widget session: double clicks and two tabs cannot
-- open a second one.
CREATE UNIQUE INDEX conversations_one_open_per_session ON conversations (widget_session_id)
    WHERE status <> 'resolved' AND widget_session_id IS NOT NULL;
-- No index here covers a column a new message changes (updated_at, last_message_*): the
-- per-message update of the conversation then stays a HOT update, with free room on the page
-- (fillfactor). The dashboard list is served by the mirror's index instead.
ALTER TABLE conversations SET (fillfactor = 70);
CREATE INDEX conversations_org_status_idx ON conversations (organization_id, status);
CREATE INDEX conversations_assignee_idx ON conversations (organization_id, assigned_to)
    WHERE assigned_to IS NOT NULL;
CREATE INDEX conversations_visitor_idx ON conversations (organization_id, visitor_id);
-- A visitor's conversations, from its widget session (row-level security asks on every call).
CREATE INDEX conversations_widget_session_idx ON conversations (widget_session_id);

-- The scalar-only mirror of conversations, kept by the SECURITY DEFINER trigger
-- sync_realtime_conversations. Only uuid, text, numbers, booleans and timestamps.
CREATE TABLE realtime_conversations (
    id                    uuid PRIMARY KEY REFERENCES conversations (id) ON DELETE CASCADE,
    organization_id       uuid NOT NULL,
    widget_session_id     uuid,
    visitor_id            text,
    customer_name         text,
    customer_email        text,
    subject               text,
    -- The enums of conversations, as their text labels.
    status                text NOT NULL,
    priority              text NOT NULL,
    assigned_to           uuid,
    assigned_at           timestamptz,
    handover_requested_at timestamptz,
    handover_reason       text,
    last_message_seq      bigint NOT NULL DEFAULT 0,
    last_message_at       timestamptz,
    last_message_preview  text,
    last_message_sender_type text,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL
) WITH (
    -- Every message rewrites its conversation's row here, and updated_at is indexed (below), so
    -- no update is HOT: dead versions and index entries pile up fast. Vacuum without waiting.
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);
-- Dashboard list, newest activity first, keyset-paginated by (updated_at, id).
CREATE INDEX realtime_conversations_list_idx ON realtime_conversations (organization_id, updated_at DESC, id DESC);

-- Messages ----------------------------------------------------------------------------------------

CREATE TABLE messages (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    conversation_id   uuid NOT NULL,
    organization_id   uuid NOT NULL,
    -- Gap-free, per conversation, assigned under the conversation's row lock.
    seq               bigint NOT NULL,
    -- 1-4000 characters, not blank.
    content           text NOT NULL,
    -- customer, agent, system or bot.
    sender_type       text NOT NULL,
    sender_user_id    uuid,
    -- At most 200 characters.
    sender_name       text,
    -- At most 320 characters.
    sender_email      text,
    -- text, note or event. A 'note' is an agent-only internal note: never visible to the visitor,
    -- never sent by a customer.
    message_type      text NOT NULL DEFAULT 'text',
    -- sent, delivered, read or failed.
    status            text NOT NULL DEFAULT 'sent',
    metadata          jsonb NOT NULL DEFAULT '{}',
    attachments       jsonb NOT NULL DEFAULT '[]',
    -- Idempotency key chosen by the sender (optimistic UI, retries): 1-128 of A-Z a-z 0-9 . _ : -
    client_message_id text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    -- Every rule above, in one compiled check (message_rules.rs), which names the field it refuses.
    CONSTRAINT messages_fields_check CHECK (message_fields_are_valid(content, sender_type, sender_name, sender_email,
                                                                     message_type, status, client_message_id)),
    FOREIGN KEY (organization_id, conversation_id)
        REFERENCES conversations (organization_id, id) ON DELETE CASCADE,
    UNIQUE (conversation_id, seq),
    UNIQUE (conversation_id, client_message_id)
);

-- Read state: one monotonic watermark (a message seq) per reader and conversation.
CREATE TABLE conversation_reads (
    organization_id uuid NOT NULL,
    conversation_id uuid NOT NULL,
    reader_type     text NOT NULL CHECK (reader_type IN ('agent', 'customer')),
    -- The agent's user id, or the visitor's widget session id.
    reader_id       uuid NOT NULL,
    last_read_seq   bigint NOT NULL CHECK (last_read_seq >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, reader_type, reader_id),
    FOREIGN KEY (organization_id, conversation_id)
        REFERENCES conversations (organization_id, id) ON DELETE CASCADE
);

-- Event log ---------------------------------------------------------------------------------------

-- The durable log every realtime event goes through. `id` is the cursor. Each transaction takes
-- a block of consecutive ids at pre-commit, and readers read only up to the log's horizon
-- (campfire.log_horizon(): below it every id is committed or rolled back), so a reader that asks
-- for `id > cursor` never skips an event that commits later.
CREATE SEQUENCE events_id_seq AS bigint;
CREATE TABLE events (
    id              bigint PRIMARY KEY,
    organization_id uuid NOT NULL,
    conversation_id uuid,
    topic           text NOT NULL,
    event           text NOT NULL,
    -- json, not jsonb: payloads are written once and sent as text, never searched inside.
    payload         json NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- A new message's conversation:updated, for the organization channel, shares the row of the
    -- message's event on the conversation list (both for members only): such a row holds two ids,
    -- `id` for the update and `id + 1` for its own event. Read rows through campfire.deliveries().
    conversation_update json
);
-- One channel's events (a client resuming), one organization's (an agent's catch-up), one
-- conversation's (erasure); and retention by age: created_at grows with id, so a BRIN index of
-- small ranges finds the old part of the log for a few bytes per page.
CREATE INDEX events_topic_idx ON events (topic, id);
CREATE INDEX events_organization_idx ON events (organization_id, id);
CREATE INDEX events_conversation_idx ON events (conversation_id) WHERE conversation_id IS NOT NULL;
CREATE INDEX events_created_at_idx ON events USING brin (created_at) WITH (pages_per_range = 16, autosummarize = on);

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

-- How far the log has been pruned: a cursor at or below this id can no longer be resumed from.
-- Its one row, like server_keys', is written on first use, never by this script: pg_dump keeps
-- the rows of both, which must not collide with rows CREATE EXTENSION made at restore.
CREATE TABLE log_state (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    pruned_through bigint NOT NULL DEFAULT 0
);

-- The key that seals every NOTIFY payload (campfire_core::sealed): the owner and, through
-- notify_key(), the relay role read it; any other login that LISTENs sees only ciphertext.
CREATE TABLE notify_keys (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    notify_key bytea NOT NULL CHECK (length(notify_key) = 32)
);

-- Private server key for widget session secrets (made by campfire.server_key() when the first
-- session starts); no role but the owner can read it.
CREATE TABLE server_keys (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    widget_key bytea NOT NULL
);
