-- Every object of this database that initdb did not make, and every reference a (cluster-wide)
-- role holds into it: what DROP EXTENSION must leave as CREATE EXTENSION found it.
SELECT fact FROM (
    SELECT pg_describe_object(o.classid, o.objid, 0)
    FROM (SELECT 'pg_class'::regclass, oid FROM pg_class
          UNION ALL SELECT 'pg_proc'::regclass, oid FROM pg_proc
          UNION ALL SELECT 'pg_type'::regclass, oid FROM pg_type
          UNION ALL SELECT 'pg_namespace'::regclass, oid FROM pg_namespace WHERE nspname !~ '^pg_(toast_)?temp_'
          UNION ALL SELECT 'pg_constraint'::regclass, oid FROM pg_constraint
          UNION ALL SELECT 'pg_trigger'::regclass, oid FROM pg_trigger
          UNION ALL SELECT 'pg_policy'::regclass, oid FROM pg_policy
          UNION ALL SELECT 'pg_rewrite'::regclass, oid FROM pg_rewrite
          UNION ALL SELECT 'pg_extension'::regclass, oid FROM pg_extension
          UNION ALL SELECT 'pg_event_trigger'::regclass, oid FROM pg_event_trigger
          UNION ALL SELECT 'pg_default_acl'::regclass, oid FROM pg_default_acl) o(classid, objid)
    WHERE o.objid >= 16384
    UNION ALL
    SELECT 'initial privileges of ' || pg_describe_object(i.classoid, i.objoid, i.objsubid)
    FROM pg_init_privs i WHERE i.objoid >= 16384
    UNION ALL
    SELECT 'comment on ' || pg_describe_object(d.classoid, d.objoid, d.objsubid) FROM pg_description d WHERE d.objoid >= 16384
    UNION ALL
    SELECT format('%s referenced by %s', pg_describe_object(s.refclassid, s.refobjid, 0),
                  pg_describe_object(s.classid, s.objid, s.objsubid))
    FROM pg_shdepend s WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
) f(fact)
ORDER BY fact;
