-- campfire.scalar_json on a DBA's own table: scalar columns only.
CREATE TYPE mood AS ENUM ('calm', 'busy');
CREATE DOMAIN short_text AS varchar(10);
CREATE TABLE shop_orders (
    id uuid, n smallint, big bigint, price numeric(10, 2), ratio float8, paid boolean,
    note text, code short_text, placed timestamptz, day date, at time,
    doc jsonb, tags text[], ip inet, state mood, pair point
);
INSERT INTO shop_orders VALUES ('11111111-2222-4333-8444-555555555555', 7, 9007199254740993, 12.50, 0.25, true,
    'hello "json"', 'ABC', '2026-01-02 03:04:05+00', '2026-01-02', '03:04:05', '{"a":1}', '{x,y}', '10.0.0.1', 'calm', '(1,2)');
SET TIME ZONE 'UTC';
SELECT jsonb_pretty(campfire.scalar_json(o)) FROM shop_orders o;
SELECT campfire.scalar_json(o) FROM (SELECT NULL::uuid AS id, NULL::text AS note) o;
SELECT t.try('SELECT campfire.scalar_json(42)') AS not_a_row;

-- The mirror keeps the scalar columns of conversations, enums as their labels.
SELECT count(*) = (SELECT count(*) FROM campfire.conversations) AS one_mirror_row_each,
       bool_and(r.status = c.status::text AND r.last_message_seq = c.last_message_seq) AS in_step
FROM campfire.realtime_conversations r JOIN campfire.conversations c USING (id);
SELECT column_name, data_type FROM information_schema.columns
WHERE table_schema = 'campfire' AND table_name = 'realtime_conversations'
  AND data_type IN ('jsonb', 'ARRAY', 'inet', 'USER-DEFINED');
-- The mirror trigger runs as its owner: a writer needs no rights on the mirror.
SELECT p.prosecdef AS security_definer FROM pg_proc p WHERE p.proname = 'sync_realtime_conversations';
SELECT has_table_privilege('campfire_client', 'campfire.realtime_conversations', 'INSERT') AS client_may_write_mirror;

-- The mirror trigger on a DBA's own table: each mirror column takes the source column of its
-- name when that is scalar (cast to the mirror's type; enums as labels), NULL otherwise.
CREATE TABLE shop_orders_mirror (
    id uuid PRIMARY KEY, n bigint, price numeric, note text, code text, state text, placed timestamptz,
    doc text, missing text
);
CREATE TRIGGER shop_orders_mirror AFTER INSERT OR UPDATE OR DELETE ON shop_orders
    FOR EACH ROW EXECUTE FUNCTION campfire.sync_realtime_conversations('public.shop_orders_mirror');
INSERT INTO shop_orders (id, n, price, note, code, state, placed, doc)
VALUES ('22222222-2222-4333-8444-555555555555', 3, 1.25, 'first', 'XY', 'busy', '2026-02-03 04:05:06+00', '{"b":2}');
SELECT * FROM shop_orders_mirror;
UPDATE shop_orders SET note = NULL, state = 'calm', n = n + 1 WHERE id = '22222222-2222-4333-8444-555555555555';
SELECT id, n, note, state FROM shop_orders_mirror WHERE id = '22222222-2222-4333-8444-555555555555';
-- A column dropped from the source in the same session: the mirror is re-planned, not misread.
ALTER TABLE shop_orders DROP COLUMN note;
UPDATE shop_orders SET n = 10 WHERE id = '22222222-2222-4333-8444-555555555555';
SELECT id, n, note, state FROM shop_orders_mirror WHERE id = '22222222-2222-4333-8444-555555555555';
DELETE FROM shop_orders WHERE id = '22222222-2222-4333-8444-555555555555';
SELECT count(*) AS mirrored_after_delete FROM shop_orders_mirror WHERE id = '22222222-2222-4333-8444-555555555555';
