-- Triggers: ordering, the scalar-only mirror and transactional events.
-- The event triggers (Rust) only queue events in memory; the extension writes them to the log
-- (or the sequencer's queue) and sends the NOTIFYs at pre-commit, after every deferred trigger:
-- never earlier, so no transaction holds the log's lock while it is still open (SET CONSTRAINTS
-- ALL IMMEDIATE used to fire a deferred flush trigger, and take that lock, at once).

ALTER FUNCTION flush_events() SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp;
ALTER FUNCTION sync_realtime_conversations() SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp;

-- admit_message (Rust, row_access.rs) refuses, before messages_assign_seq (which runs as the
-- owner) reads or locks the conversation, a message the caller's row-level security would refuse
-- anyway: "not yours" and "does not exist" then get the same answer, and no row the caller may
-- not see is ever locked. It runs with the caller's rights.

-- Gives each new message the next gap-free sequence number of its conversation, under the
-- conversation's row lock, and keeps the conversation's summary current; a retry (its
-- client_message_id already stored) is skipped (assign_message_seq, Rust: message_seq.rs).
ALTER FUNCTION assign_message_seq() SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp;

CREATE TRIGGER organizations_touch BEFORE UPDATE ON organizations
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE TRIGGER organization_members_touch BEFORE UPDATE ON organization_members
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER organization_members_events AFTER INSERT OR UPDATE OF availability ON organization_members
    FOR EACH ROW EXECUTE FUNCTION agent_status_events();

CREATE TRIGGER conversations_touch BEFORE UPDATE ON conversations
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER sync_realtime_conversations_trigger AFTER INSERT OR UPDATE OR DELETE ON conversations
    FOR EACH ROW EXECUTE FUNCTION sync_realtime_conversations('campfire.realtime_conversations');
CREATE TRIGGER conversations_events AFTER INSERT OR UPDATE OR DELETE ON conversations
    FOR EACH ROW EXECUTE FUNCTION conversation_events();

-- Before-row triggers fire in name order: admit first.
CREATE TRIGGER messages_admit BEFORE INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION admit_message();
CREATE TRIGGER messages_assign_seq BEFORE INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION assign_message_seq();
CREATE TRIGGER messages_touch BEFORE UPDATE ON messages
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER messages_events AFTER INSERT OR UPDATE ON messages
    FOR EACH ROW EXECUTE FUNCTION message_events();

CREATE TRIGGER conversation_reads_events AFTER INSERT OR UPDATE ON conversation_reads
    FOR EACH ROW EXECUTE FUNCTION read_receipt_events();

-- Rights taken back (announce_access_change, Rust) are announced sealed: it reads the notify key.
ALTER FUNCTION announce_access_change() SECURITY DEFINER SET search_path = pg_catalog, campfire, pg_temp;

CREATE TRIGGER organization_members_access AFTER UPDATE OF role, status OR DELETE ON organization_members
    FOR EACH ROW EXECUTE FUNCTION announce_access_change();
CREATE TRIGGER widget_sessions_access AFTER UPDATE OF revoked_at, expires_at OR DELETE ON widget_sessions
    FOR EACH ROW EXECUTE FUNCTION announce_access_change();
