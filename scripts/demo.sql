-- Demo data for scripts/run.sh: one organization, an admin agent, a visitor's conversation and
-- a conversation the bot has handed over, waiting for a human. Fixed ids make URLs stable.
BEGIN;
SELECT set_config('request.jwt.claims', '{"role":"service_role"}', true);
INSERT INTO campfire.organizations (id, name, slug, settings)
VALUES ('d3000000-0000-4000-8000-000000000001', 'Campfire Demo', 'demo', '{"bot_enabled": false}')
ON CONFLICT (id) DO NOTHING;
SELECT campfire.add_member('d3000000-0000-4000-8000-000000000001', 'a9000000-0000-4000-8000-000000000001',
                           'admin', 'active', 'Dana (demo agent)', 'dana@example.com');
COMMIT;

-- A visitor who has already written in.
SELECT set_config('demo.conversation',
       (SELECT conversation_id::text FROM campfire.start_widget_session(
            'd3000000-0000-4000-8000-000000000001', 'demo-visitor', 'visitor@example.com', 'Vera Visitor')), false);
BEGIN;
SELECT set_config('request.jwt.claims', '{"role":"service_role"}', true);
SELECT count(*) FROM (
    SELECT campfire.send_message(current_setting('demo.conversation')::uuid, 'Hi! Is anyone there?',
                                 sender_type => 'customer', client_message_id => 'demo-1')) s;
COMMIT;

-- A conversation the bot handled and handed over.
SELECT set_config('demo.bot_conversation',
       (SELECT conversation_id::text FROM campfire.start_widget_session(
            'd3000000-0000-4000-8000-000000000001', 'demo-bot-visitor', NULL, 'Bo Botless')), false);
BEGIN;
SELECT set_config('request.jwt.claims', '{"role":"service_role"}', true);
UPDATE campfire.conversations SET status = 'bot' WHERE id = current_setting('demo.bot_conversation')::uuid
   AND status = 'open' AND last_message_seq = 0;
SELECT count(*) FROM (
    SELECT campfire.send_message(current_setting('demo.bot_conversation')::uuid, 'I need to change my order',
                                 sender_type => 'customer', client_message_id => 'demo-bot-1')
    UNION ALL
    SELECT campfire.send_message(current_setting('demo.bot_conversation')::uuid, 'Let me get a human for that.',
                                 sender_type => 'bot', client_message_id => 'demo-bot-2')) s;
SELECT campfire.request_handover(current_setting('demo.bot_conversation')::uuid, 'order change')
WHERE (SELECT status FROM campfire.conversations WHERE id = current_setting('demo.bot_conversation')::uuid) = 'bot';
COMMIT;
