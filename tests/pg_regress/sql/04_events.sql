-- Transactional events: what a write puts in the log, and what a rollback does not.
SET ROLE campfire_test_client;
\set conv_a '(SELECT conversation_id FROM t.sessions WHERE name = ''visitor_a'')'
CREATE TEMP TABLE mark AS SELECT t.head() AS id;
GRANT SELECT, UPDATE ON mark TO PUBLIC;
-- The events the log delivers (a row can hold two: see campfire.deliveries), as whoever asks sees them.
CREATE TEMP VIEW logged WITH (security_invoker = true) AS SELECT d.* FROM campfire.events e, campfire.deliveries(e) d;
GRANT SELECT ON logged TO PUBLIC;

-- One message: three events, in one transaction, with consecutive cursors.
CALL t.act_as('visitor_a');
SELECT seq FROM campfire.send_message(:conv_a, 'ping');
CALL t.act_as('service');
SELECT e.id - m.id AS n, t.redact(e.topic) AS topic, e.event,
       e.payload -> 'message' ->> 'content' AS content, e.payload -> 'conversation' ->> 'last_message_preview' AS preview
FROM logged e, mark m WHERE e.id > m.id ORDER BY e.id;
-- The update and the list's event share one log row: reads from a cursor between them, one
-- event per page, and by channel still give each event once, in order.
SELECT count(*) AS log_rows FROM campfire.events e, mark m WHERE e.id > m.id;
SELECT e.id - m.id AS n, e.event FROM mark m, campfire.events_since(m.id + 1) e;
SELECT (SELECT e.id - m.id FROM campfire.events_since(m.id + k, max_rows => 1) e) AS next_after, k
FROM mark m, generate_series(0, 3) k;
SELECT e.id - m.id AS n, e.event FROM mark m, campfire.events_since(m.id, 'org:aaaaaaaa-0000-4000-8000-00000000000a') e;
RESET ROLE;
SELECT e.id - m.id AS n, e.event FROM mark m, campfire.read_log(m.id + 2, 10, 'org:aaaaaaaa-0000-4000-8000-00000000000a:conversations') e;
SET ROLE campfire_test_client;
UPDATE mark SET id = t.head();

-- A rolled-back write announces nothing; so does a rolled-back savepoint, while the rest commits.
CALL t.act_as('agent_a');
BEGIN;
SELECT seq FROM campfire.send_message(:conv_a, 'rolled back');
ROLLBACK;
BEGIN;
SELECT seq FROM campfire.send_message(:conv_a, 'kept 1');
SAVEPOINT s;
SELECT seq FROM campfire.send_message(:conv_a, 'discarded');
ROLLBACK TO SAVEPOINT s;
SAVEPOINT s2;
SELECT seq FROM campfire.send_message(:conv_a, 'kept 2');
RELEASE SAVEPOINT s2;
COMMIT;
CALL t.act_as('service');
SELECT e.event, e.payload -> 'message' ->> 'content' AS content, e.payload -> 'message' ->> 'seq' AS seq
FROM logged e, mark m WHERE e.id > m.id AND e.event = 'message:created' AND e.topic LIKE '%:conv:%' ORDER BY e.id;
UPDATE mark SET id = t.head();

-- NOTIFY limits never fail a write: 4000 multi-byte characters (about 12 kB) and a 1 MB
-- metadata document commit, and the event is in the log whole (metadata, being JSONB, is not
-- part of a realtime payload).
CALL t.act_as('agent_a');
SELECT seq, octet_length(content) AS bytes, pg_column_size(metadata) > 500000 AS big_metadata
FROM campfire.send_message(:conv_a, repeat('日本', 2000),
                           metadata => jsonb_build_object('blob', repeat('m', 1000000)));
CALL t.act_as('service');
SELECT length(e.payload -> 'message' ->> 'content') AS content_chars, (e.payload -> 'message' -> 'metadata') IS NOT NULL AS has_metadata
FROM logged e, mark m WHERE e.id > m.id AND e.topic LIKE '%:conv:%';
-- Many events in one transaction (a bulk load) also commit, through the log.
RESET ROLE;
INSERT INTO campfire.messages (conversation_id, organization_id, content, sender_type)
SELECT :conv_a, 'aaaaaaaa-0000-4000-8000-00000000000a', 'bulk ' || i, 'system' FROM generate_series(1, 500) i;
SET ROLE campfire_test_client;
SELECT count(*) AS bulk_events FROM logged e, mark m WHERE e.id > m.id AND e.payload -> 'message' ->> 'content' LIKE 'bulk %';
UPDATE mark SET id = t.head();

-- Two messages in one transaction write four log rows, the most one VALUES insert takes; three
-- write six, through the parameter arrays: both give every event once, in order, with its seq.
CALL t.act_as('service');
BEGIN;
SELECT m.seq FROM generate_series(1, 2) i, campfire.send_message(:conv_a, 'pair ' || i, 'system') m;
COMMIT;
BEGIN;
SELECT m.seq FROM generate_series(1, 3) i, campfire.send_message(:conv_a, 'triple ' || i, 'system') m;
COMMIT;
SELECT e.id - m.id AS n, t.redact(e.topic) AS topic, e.event,
       coalesce(e.payload -> 'message' ->> 'content', e.payload -> 'conversation' ->> 'last_message_preview') AS content
FROM logged e, mark m WHERE e.id > m.id ORDER BY e.id;
UPDATE mark SET id = t.head();

-- Payloads are scalar-only: no JSONB, arrays, inet or enum columns of conversations.
SELECT e.event, json_object_keys(e.payload -> 'conversation') AS key
FROM logged e WHERE e.event = 'conversation:created' AND e.organization_id = 'bbbbbbbb-0000-4000-8000-00000000000b'
ORDER BY 2;

-- Updates announce message:updated; agent-only notes never reach the conversation channel.
RESET ROLE;
UPDATE campfire.messages SET status = 'read' WHERE conversation_id = :conv_a AND seq = 1;
SET ROLE campfire_test_client;
SELECT e.event, t.redact(e.topic) AS topic FROM logged e, mark m WHERE e.id > m.id ORDER BY e.id;
SELECT count(*) AS notes_on_conversation_channel FROM logged
WHERE topic LIKE '%:conv:%' AND payload -> 'message' ->> 'message_type' = 'note';
SELECT count(*) AS notes_on_conversation_list FROM logged
WHERE topic LIKE '%:conversations' AND payload -> 'message' ->> 'message_type' = 'note';

-- Read receipts and agent status.
SELECT DISTINCT e.event, e.payload ->> 'readerType' AS reader FROM logged e WHERE e.event = 'read:receipt' ORDER BY 2;
SELECT e.event, e.payload ->> 'availability' AS availability, t.redact(e.topic) AS topic
FROM logged e WHERE e.event LIKE 'agent:status:%' ORDER BY e.id;

-- Custom events through the log: service role only, channel validated.
UPDATE mark SET id = t.head();
SELECT t.try($$SELECT campfire.broadcast('aaaaaaaa-0000-4000-8000-00000000000a', 'org:aaaaaaaa-0000-4000-8000-00000000000a', 'custom:event', '{"x":1}')$$) AS client_broadcast;
RESET ROLE;
SELECT campfire.broadcast('aaaaaaaa-0000-4000-8000-00000000000a', 'bcast:org:aaaaaaaa-0000-4000-8000-00000000000a:widget:visitor:' || repeat('v', 128), 'custom:event', '{"x":1}') AS written;
SELECT t.try($$SELECT campfire.broadcast('aaaaaaaa-0000-4000-8000-00000000000a', 'org:bbbbbbbb-0000-4000-8000-00000000000b', 'custom:event', '{}')$$) AS other_org;
SELECT t.try($$SELECT campfire.broadcast('aaaaaaaa-0000-4000-8000-00000000000a', 'room1', 'custom:event', '{}')$$) AS bad_channel;
SELECT length(e.topic) AS topic_length, e.event, e.payload FROM logged e, mark m WHERE e.id > m.id;
SET ROLE campfire_test_client;

-- Reading the log: events_since follows RLS; read_log is the relay's.
CALL t.act_as('visitor_a');
SELECT count(*) > 0 AS some, bool_and(topic = 'org:aaaaaaaa-0000-4000-8000-00000000000a:conv:' || :conv_a) AS own_channel_only
FROM campfire.events_since(0, max_rows => 10000);
SELECT count(*) AS other_topic FROM campfire.events_since(0, 'org:aaaaaaaa-0000-4000-8000-00000000000a');
SELECT t.try($$SELECT campfire.events_since(0, 'not a channel')$$) AS bad_topic;
SELECT t.try($$SELECT campfire.read_log(0)$$) AS client_reads_whole_log;
SET ROLE campfire_test_relay;
SELECT count(*) = (SELECT count(*) FROM campfire.read_log(0, 10000)) AS relay_reads_everything,
       campfire.log_head() = max(id) AS head_is_newest
FROM (SELECT id FROM campfire.read_log(0, 10000)) l;
RESET ROLE;
CALL t.act_as('nobody');

-- The log's horizon: every id up to it is settled, so here, with no commit in flight, it is the
-- newest id; a transaction snapshot could predate it, so the readers refuse one; a transaction
-- with events cannot be prepared.
RESET ROLE;
SELECT campfire.log_horizon() = max(id) AS horizon_is_newest FROM logged;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT t.try($$SELECT count(*) FROM campfire.events_since(0)$$) AS repeatable_read;
ROLLBACK;
BEGIN;
SELECT campfire.broadcast('aaaaaaaa-0000-4000-8000-00000000000a', 'org:aaaaaaaa-0000-4000-8000-00000000000a', 'custom:prepared', '{}') AS queued;
PREPARE TRANSACTION 'campfire_regress_prepared';
SELECT count(*) AS prepared_events FROM logged WHERE event = 'custom:prepared';
