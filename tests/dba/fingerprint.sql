-- A catalog fingerprint of everything pg_campfire installs, one fact per row, sorted, so that two
-- databases compare with diff (scripts/dba_test.sh: an upgraded installation against a fresh one).
-- pg_dump --schema-only would not do: it leaves out the members of an extension.
WITH ext AS (SELECT e.* FROM pg_catalog.pg_extension e WHERE e.extname = 'pg_campfire'),
members AS (
    SELECT d.classid, d.objid FROM pg_catalog.pg_depend d, ext
    WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'),
rels AS (SELECT c.* FROM pg_catalog.pg_class c WHERE c.relnamespace = 'campfire'::regnamespace)
SELECT fact FROM (
    SELECT format('extension %s %s in %s, relocatable %s', extname, extversion, extnamespace::regnamespace,
                  extrelocatable) FROM ext
    UNION ALL
    SELECT format('extension depends on %s (%s)', pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid), d.deptype)
    FROM pg_catalog.pg_depend d, ext WHERE d.classid = 'pg_catalog.pg_extension'::regclass AND d.objid = ext.oid
    UNION ALL
    SELECT format('dumped with data: %s %s', c.rel::regclass, nullif(c.cond, ''))
    FROM ext, unnest(ext.extconfig, ext.extcondition) AS c(rel, cond)
    UNION ALL
    SELECT 'member: ' || pg_describe_object(m.classid, m.objid, 0) FROM members m
    UNION ALL
    SELECT format('schema %s owner %s acl %s', n.nspname, n.nspowner::regrole, n.nspacl)
    FROM pg_catalog.pg_namespace n WHERE n.nspname = 'campfire'
    UNION ALL
    SELECT format('default acl %s %s', a.defaclobjtype, a.defaclacl) FROM pg_catalog.pg_default_acl a
    WHERE a.defaclnamespace = 'campfire'::regnamespace
    UNION ALL
    SELECT format('initial privileges of %s: %s (%s)', pg_describe_object(i.classoid, i.objoid, i.objsubid),
                  i.initprivs, i.privtype)
    FROM pg_catalog.pg_init_privs i JOIN members m ON m.classid = i.classoid AND m.objid = i.objoid
    UNION ALL
    SELECT format('comment on %s: %s', pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description)
    FROM pg_catalog.pg_description d JOIN members m ON m.classid = d.classoid AND m.objid = d.objoid
    UNION ALL
    -- Functions: signature, body, language, volatility, security, settings (all in the definition).
    SELECT format('function %s owner %s acl %s%s%s', p.oid::regprocedure, p.proowner::regrole, p.proacl, E'\n',
                  pg_get_functiondef(p.oid))
    FROM pg_catalog.pg_proc p WHERE p.pronamespace = 'campfire'::regnamespace
    UNION ALL
    SELECT format('relation %s kind %s persistence %s owner %s rls %s forced %s replica identity %s options %s acl %s',
                  c.relname, c.relkind, c.relpersistence, c.relowner::regrole, c.relrowsecurity,
                  c.relforcerowsecurity, c.relreplident, c.reloptions, c.relacl)
    FROM rels c
    UNION ALL
    -- Columns by position among the live ones (a column added later would come last).
    SELECT format('column %s.%s #%s %s%s%s%s%s acl %s', c.relname, a.attname,
                  row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum), format_type(a.atttypid, a.atttypmod),
                  CASE WHEN a.attnotnull THEN ' not null' END, ' default ' || pg_get_expr(ad.adbin, ad.adrelid),
                  ' identity ' || nullif(a.attidentity::text, ''), ' collate ' || nullif(a.attcollation, 0)::regcollation,
                  a.attacl)
    FROM rels c JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
    UNION ALL
    SELECT format('constraint %s on %s: %s%s', k.conname, coalesce(k.conrelid::regclass::text, k.contypid::regtype::text),
                  pg_get_constraintdef(k.oid), CASE WHEN k.condeferrable THEN ' deferrable' END)
    FROM pg_catalog.pg_constraint k WHERE k.connamespace = 'campfire'::regnamespace
    UNION ALL
    SELECT 'index ' || pg_get_indexdef(i.indexrelid) FROM pg_catalog.pg_index i JOIN rels c ON c.oid = i.indrelid
    UNION ALL
    SELECT format('trigger %s enabled %s', pg_get_triggerdef(t.oid), t.tgenabled)
    FROM pg_catalog.pg_trigger t JOIN rels c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal
    UNION ALL
    SELECT format('policy %s on %s %s %s to %s using %s check %s', p.polname, c.relname, p.polcmd,
                  CASE WHEN p.polpermissive THEN 'permissive' ELSE 'restrictive' END, p.polroles::regrole[],
                  pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid))
    FROM pg_catalog.pg_policy p JOIN rels c ON c.oid = p.polrelid
    UNION ALL
    SELECT format('view %s: %s', c.relname, pg_get_viewdef(c.oid)) FROM rels c WHERE c.relkind IN ('v', 'm')
    UNION ALL
    SELECT format('sequence %s as %s start %s increment %s min %s max %s cache %s cycle %s owned by %s',
                  c.relname, s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache,
                  s.seqcycle, pg_get_serial_sequence_owner.owner)
    FROM rels c JOIN pg_catalog.pg_sequence s ON s.seqrelid = c.oid
    LEFT JOIN LATERAL (
        SELECT pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid) AS owner FROM pg_catalog.pg_depend d
        WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'a'
          AND d.refclassid = 'pg_catalog.pg_class'::regclass) pg_get_serial_sequence_owner ON true
    UNION ALL
    SELECT format('type %s kind %s acl %s%s', t.typname, t.typtype, t.typacl,
                  ' labels ' || (SELECT string_agg(e.enumlabel, ', ' ORDER BY e.enumsortorder)
                                 FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid))
    FROM pg_catalog.pg_type t
    WHERE t.typnamespace = 'campfire'::regnamespace AND t.typtype <> 'b' AND t.typrelid = 0
) f(fact)
ORDER BY fact;
