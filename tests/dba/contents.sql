-- What the database holds, table by table (rows, and a digest of them in order) and sequence by
-- sequence: equal before a backup and after its restore means every row and id came back and
-- nothing fired on the way (no event, seq, mirror row or timestamp made again). Rows as JSON
-- without their NULL fields, so that a column an upgrade adds, NULL in the old rows, changes nothing.
\set ON_ERROR_STOP 1
SELECT format('SELECT %L, count(*), md5(coalesce(string_agg(x.r, E''\n'' ORDER BY x.r), '''')) FROM campfire.%I t, LATERAL (SELECT jsonb_strip_nulls(to_jsonb(t))::text) x(r)',
              c.relname, c.relname)
FROM pg_catalog.pg_class c WHERE c.relnamespace = 'campfire'::regnamespace AND c.relkind = 'r' ORDER BY c.relname
\gexec
SELECT format('SELECT %L, last_value, is_called FROM campfire.%I', c.relname, c.relname)
FROM pg_catalog.pg_class c WHERE c.relnamespace = 'campfire'::regnamespace AND c.relkind = 'S' ORDER BY c.relname
\gexec
