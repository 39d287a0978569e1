-- A little of everything, written through the SQL API by a service, an agent and a visitor: what
-- the DBA tests back up, restore and upgrade. Prints the visitor's session secret, nothing else.
\set ON_ERROR_STOP 1
\o /dev/null
SELECT set_config('request.jwt.claims', '{"role":"service_role"}', false);
SELECT campfire.create_organization('Acme', 'acme') AS org \gset
SELECT campfire.add_member(:'org', 'a1000000-0000-4000-8000-000000000001', 'admin', 'active', 'Dana', 'dana@example.com');
SELECT * FROM campfire.start_widget_session(:'org', 'visitor-1', 'vera@example.com', 'Vera') \gset
SELECT set_config('request.jwt.claims', json_build_object('role', 'visitor', 'widget_session_id', :'widget_session_id')::text, false);
SELECT campfire.send_message(:'conversation_id', 'Hello?');
SELECT campfire.mark_read(:'conversation_id');
SELECT set_config('request.jwt.claims', '{"role":"authenticated","sub":"a1000000-0000-4000-8000-000000000001"}', false);
SELECT campfire.set_availability(:'org', 'online');
SELECT campfire.send_message(:'conversation_id', 'Hi Vera, how can I help?');
SELECT campfire.send_message(:'conversation_id', 'VIP customer', message_type => 'note');
SELECT campfire.mark_read(:'conversation_id');
SELECT campfire.assign_conversation(:'conversation_id', 'a1000000-0000-4000-8000-000000000001');
-- Retention: the oldest events aged and pruned, so that log_state holds a row worth keeping.
UPDATE campfire.events SET created_at = created_at - interval '2 days'
 WHERE id IN (SELECT id FROM campfire.events ORDER BY id LIMIT 2);
SELECT set_config('request.jwt.claims', '{"role":"service_role"}', false);
SELECT campfire.prune_events(interval '1 day');
\echo :session_secret
