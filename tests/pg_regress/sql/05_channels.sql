-- Channel names and who may use them.
SELECT kind, organization_id, conversation_id, visitor_id, canonical
FROM campfire.parse_channel('bcast:org:AAAAAAAA-0000-4000-8000-00000000000A:conv:48eedfba-2568-4231-bb38-2ce20420900d:typing');
SELECT t.try(format('SELECT campfire.parse_channel(%L)', name)) AS result
FROM unnest(ARRAY['', 'room1', 'realtime:org:x', 'org:not-a-uuid', 'org:aaaaaaaa-0000-4000-8000-00000000000a:conv',
                  'org:aaaaaaaa-0000-4000-8000-00000000000a:unknown', 'org:aaaaaaaa-0000-4000-8000-00000000000a''; DROP TABLE campfire.messages; --',
                  'org:aaaaaaaa-0000-4000-8000-00000000000a:widget:visitor:' || repeat('v', 300)]) AS name;

-- The authorization matrix: principal x channel -> read/broadcast/presence or the reason.
CREATE FUNCTION t.channels() RETURNS TABLE (channel_name text, topic text) LANGUAGE sql AS $$
    SELECT 'org', 'org:aaaaaaaa-0000-4000-8000-00000000000a'
    UNION ALL SELECT 'conversations', 'org:aaaaaaaa-0000-4000-8000-00000000000a:conversations'
    UNION ALL SELECT 'agents:presence', 'org:aaaaaaaa-0000-4000-8000-00000000000a:agents:presence'
    UNION ALL SELECT 'conv A', 'bcast:org:aaaaaaaa-0000-4000-8000-00000000000a:conv:' || conversation_id FROM t.sessions WHERE name = 'visitor_a'
    UNION ALL SELECT 'conv A:typing', 'org:aaaaaaaa-0000-4000-8000-00000000000a:conv:' || conversation_id || ':typing' FROM t.sessions WHERE name = 'visitor_a'
    UNION ALL SELECT 'conv A:presence', 'org:aaaaaaaa-0000-4000-8000-00000000000a:conv:' || conversation_id || ':presence' FROM t.sessions WHERE name = 'visitor_a'
    UNION ALL SELECT 'session A', 'org:aaaaaaaa-0000-4000-8000-00000000000a:widget:session:' || widget_session_id FROM t.sessions WHERE name = 'visitor_a'
    UNION ALL SELECT 'visitor A', 'org:aaaaaaaa-0000-4000-8000-00000000000a:widget:visitor:visitor-a'
    UNION ALL SELECT 'conv A under org B', 'org:bbbbbbbb-0000-4000-8000-00000000000b:conv:' || conversation_id FROM t.sessions WHERE name = 'visitor_a'
    UNION ALL SELECT 'unknown conv', 'org:aaaaaaaa-0000-4000-8000-00000000000a:conv:00000000-0000-4000-8000-000000000000'
    UNION ALL SELECT 'widget:conv A', 'org:aaaaaaaa-0000-4000-8000-00000000000a:widget:' || conversation_id FROM t.sessions WHERE name = 'visitor_a'
$$;
SELECT p.name AS principal, c.channel_name,
       concat_ws(' ', CASE WHEN (a ->> 'read')::boolean THEN 'read' END,
                      CASE WHEN (a ->> 'broadcast')::boolean THEN 'broadcast' END,
                      CASE WHEN (a ->> 'presence')::boolean THEN 'presence' END,
                      t.redact(a ->> 'reason')) AS decision
FROM t.principals p CROSS JOIN t.channels() c
CROSS JOIN LATERAL campfire.authorize_channel(c.topic, coalesce(p.claims, '{}')) a
WHERE p.name IN ('visitor_a', 'visitor_b', 'agent_a', 'viewer_a', 'agent_b', 'inactive_a', 'service', 'nobody')
ORDER BY p.name, c.channel_name;
-- The canonical topic drops the prefix and lowercases ids; the seeds' widget spelling of a
-- conversation channel is that conversation's channel.
SELECT campfire.authorize_channel('bcast:org:aaaaaaaa-0000-4000-8000-00000000000a:widget:' || conversation_id, '{"role":"service_role"}') ->> 'topic' = 'org:aaaaaaaa-0000-4000-8000-00000000000a:conv:' || conversation_id AS widget_spelling_is_the_conversation
FROM t.sessions WHERE name = 'visitor_a';
SELECT campfire.authorize_channel('bcast:org:AAAAAAAA-0000-4000-8000-00000000000A', '{"role":"service_role"}') ->> 'topic' AS canonical;
