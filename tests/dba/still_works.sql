-- After a restore or an upgrade: the visitor's secret from before is accepted, and the visitor
-- writes on, continuing its conversation's seq and the log's ids. Raises on the first failure.
-- Takes the secret as :secret.
\set ON_ERROR_STOP 1
CREATE FUNCTION pg_temp.expect(ok boolean, what text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION 'expected %', what;
    END IF;
    RETURN what;
END
$$;
SELECT s.id AS session_id, c.id AS conversation_id, c.last_message_seq AS seq,
       (SELECT max(d.id) FROM campfire.events e, campfire.deliveries(e) d) AS head
FROM campfire.widget_sessions s JOIN campfire.conversations c ON c.widget_session_id = s.id
WHERE s.visitor_id = 'visitor-1' \gset
SET ROLE campfire_relay;
SELECT pg_temp.expect(campfire.visitor_claims(:'secret') ->> 'widget_session_id' = :'session_id',
                      'the visitor secret issued before to be accepted (visitor_claims as campfire_relay)');
SET ROLE campfire_client;
SELECT set_config('request.jwt.claims', json_build_object('role', 'visitor', 'widget_session_id', :'session_id')::text, false);
SELECT (campfire.send_message(:'conversation_id', 'Still there?')).seq AS new_seq \gset
RESET ROLE;
SELECT pg_temp.expect(:new_seq = :seq + 1, 'a new message to continue its conversation''s seq');
SELECT pg_temp.expect((SELECT count(*) = 3 AND min(d.id) > :head FROM campfire.events e, campfire.deliveries(e) d WHERE d.id > :head),
                      'its three events to be logged after the log''s last id');
