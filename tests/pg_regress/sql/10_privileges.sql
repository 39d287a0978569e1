-- The privilege surface, in full: any change to who may run or read what, or to which code runs
-- with the owner's rights, shows up here as a diff in review.

-- Functions: owner's rights or the caller's, their pinned settings, and who may execute them.
SELECT p.oid::regprocedure AS function, CASE WHEN p.prosecdef THEN 'definer' ELSE 'invoker' END AS rights,
       p.proconfig AS settings, p.proacl AS grants
FROM pg_proc p WHERE p.pronamespace = 'campfire'::regnamespace ORDER BY p.oid::regprocedure::text;

-- Relations: row-level security, and grants.
SELECT c.relname, c.relkind, c.relrowsecurity AS rls, c.relforcerowsecurity AS forced, c.relacl AS grants,
       c.reloptions AS options
FROM pg_class c WHERE c.relnamespace = 'campfire'::regnamespace AND c.relkind IN ('r', 'v', 'S', 'm')
ORDER BY c.relname;

-- Policies, per table and command.
SELECT tablename, policyname, cmd, roles FROM pg_policies WHERE schemaname = 'campfire' ORDER BY 1, 2;

-- Rules every change must keep (each query lists what breaks them; all are empty):
-- every owner's-rights function pins search_path with pg_temp last,
SELECT p.oid::regprocedure AS definer_without_safe_search_path FROM pg_proc p
WHERE p.pronamespace = 'campfire'::regnamespace AND p.prosecdef
  AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, campfire, pg_temp'], false);
-- every PL/pgSQL variable has a type no search_path can redirect (PL/pgSQL resolves declared types
-- once per session, when a function first runs: a helper first run by a login with planted types
-- would keep them when owner's-rights code calls it later), so: schema-qualified, a type keyword
-- of the SQL grammar, or record,
SELECT p.oid::regprocedure AS function, btrim(d.declaration) AS unqualified_declaration
FROM pg_proc p
CROSS JOIN LATERAL regexp_split_to_table(substring(p.prosrc from '\mDECLARE\M(.*?)\mBEGIN\M'), E'\n') AS d(declaration)
WHERE p.pronamespace = 'campfire'::regnamespace
  AND p.prolang = (SELECT l.oid FROM pg_language l WHERE l.lanname = 'plpgsql')
  AND btrim(d.declaration) <> ''
  AND d.declaration !~ '^\s*\w+\s+(constant\s+)?(\w+\.\w+|bigint|integer|boolean|interval|record)\M';
-- every table has row-level security enabled and forced,
SELECT c.relname AS table_without_forced_rls FROM pg_class c
WHERE c.relnamespace = 'campfire'::regnamespace AND c.relkind = 'r' AND NOT (c.relrowsecurity AND c.relforcerowsecurity);
-- PUBLIC may execute only the pure functions and read nothing,
SELECT p.oid::regprocedure AS public_may_execute FROM pg_proc p
WHERE p.pronamespace = 'campfire'::regnamespace AND has_function_privilege('public', p.oid, 'EXECUTE')
  AND p.provolatile <> 'i' AND p.proname <> 'scalar_json';
SELECT c.relname AS public_may_read FROM pg_class c
WHERE c.relnamespace = 'campfire'::regnamespace AND c.relkind IN ('r', 'v', 'S', 'm')
  AND (c.relacl IS NULL OR c.relacl::text LIKE '%"=%' OR c.relacl::text LIKE '%{=%' OR c.relacl::text LIKE '%,=%');
-- and no client role may read the server or notify key, or write the log.
SELECT r.rolname, t.tbl, p.priv FROM (VALUES ('campfire_client'), ('campfire_relay'), ('campfire_service')) r(rolname)
CROSS JOIN (VALUES ('campfire.server_keys'), ('campfire.notify_keys'), ('campfire.events'),
                   ('campfire.log_state')) t(tbl)
CROSS JOIN (VALUES ('SELECT'), ('INSERT'), ('UPDATE'), ('DELETE')) p(priv)
WHERE has_table_privilege(r.rolname, t.tbl, p.priv) AND NOT (t.tbl = 'campfire.events' AND p.priv = 'SELECT');
