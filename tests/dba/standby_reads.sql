-- On a hot standby: the relay's and a visitor's reads answer there (each used to take a
-- transaction id, which recovery refuses). Takes the visitor's secret as :secret; prints what
-- each read found, one line each.
\set ON_ERROR_STOP 1
SELECT s.id AS session_id, c.id AS conversation_id
FROM campfire.widget_sessions s JOIN campfire.conversations c ON c.widget_session_id = s.id
WHERE s.visitor_id = 'visitor-1' \gset
SET ROLE campfire_relay;
SELECT 'claims', campfire.visitor_claims(:'secret') ->> 'widget_session_id' = :'session_id';
SELECT 'read_log', count(*) > 0 FROM campfire.read_log(0);
SELECT 'log_head', campfire.log_head() > 0;
SET ROLE campfire_client;
SELECT 'visitor', set_config('request.jwt.claims', json_build_object('role', 'visitor', 'widget_session_id', :'session_id')::text, false) IS NOT NULL;
SELECT 'history', count(*) > 0 FROM campfire.history(:'conversation_id');
SELECT 'conversations', cardinality(campfire.visitor_conversations());
