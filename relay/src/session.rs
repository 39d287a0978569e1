//! One WebSocket client: a writer task draining its bounded queue, a reader loop that handles
//! heartbeats, joins, leaves, broadcasts, presence, token refreshes and access changes, and a
//! close that lets the close frame reach the client.

use crate::Relay;
use crate::access::{AccessChange, AccessWatch};
use crate::auth::{self, AuthError, Identity};
use crate::client_broadcast;
use crate::db::{Authorization, DbError};
use crate::errors::{ChannelEnd, CloseReason, CredentialError, Refusal};
use crate::limits::{Action, ConnectionSlot, ConnectionUsage};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::protocol::{self, Broadcast, ChannelMessage, ClientMessage, Frame, JoinRequest, PresenceChange, Vsn};
use crate::rooms::{self, Join};
use crate::shards;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

/// A joined channel, as this connection sees it.
struct JoinedChannel {
    canonical: String,
    join_ref: Option<String>,
    identity: Identity,
    may_broadcast: bool,
    may_track: bool,
    /// `config.broadcast.ack`: reply to each broadcast once it is fanned out.
    ack: bool,
    presence_key: String,
    /// The payload of a typing:start not yet followed by typing:stop, and when it was sent.
    typing: Option<(Value, Instant)>,
}

struct Session {
    relay: Arc<Relay>,
    outbox: Arc<Outbox>,
    /// The credential given at connect time (apikey), used by joins that carry none; `None` when
    /// the apikey was a Supabase API key.
    identity: Option<Identity>,
    channels: HashMap<String, JoinedChannel>,
    usage: ConnectionUsage,
    /// The ids the channels were joined as, watched for access changes.
    access: AccessWatch,
}

/// At most this many queued frames are coalesced into one socket write.
const MAX_FRAMES_PER_WRITE: u64 = 64;

/// A client silent this long after the close frame went out will not answer it: the socket is
/// closed (its input drained, so without a reset).
const CLOSE_QUIET: Duration = Duration::from_millis(500);

fn sub_topic(topic: &str) -> &str {
    topic.strip_prefix("realtime:").unwrap_or(topic)
}

/// The `system` message telling a resuming client that the log was pruned past its cursor.
fn history_lost(join_topic: &str, join_ref: Option<&str>, cursor: i64, tail: i64) -> Frame {
    let system = json!({
        "extension": "campfire",
        "status": "error",
        "message": format!("cursor_too_old: the log was pruned through {tail}, after cursor {cursor}: reload history"),
        "channel": sub_topic(join_topic),
    });
    protocol::channel_push(join_topic, join_ref, "system", system)
}

/// The join reply's `postgres_changes`: each requested filter echoed in order with an integer
/// `id` (realtime-js checks the echo and reports SUBSCRIBED). The relay does not stream table
/// changes; a `system` error says so right after the reply.
fn echo_postgres_changes(requested: &[Value]) -> Vec<Value> {
    requested
        .iter()
        .map(|filter| {
            let mut filter = filter.clone();
            if let Value::Object(map) = &mut filter {
                // FNV-1a of the filter: stable, and exact as a JavaScript number.
                let id = filter_text(map).bytes().fold(0x811c_9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193));
                map.insert("id".into(), json!(id));
            }
            filter
        })
        .collect()
}

fn filter_text(map: &serde_json::Map<String, Value>) -> String {
    Value::Object(map.clone()).to_string()
}

/// Turns a token into an identity: a JWT is verified here, a widget session secret by the
/// extension, on the shard of `organization` when the caller names one (else on any shard).
pub async fn resolve_token(
    relay: &Relay,
    token: &str,
    organization: Option<uuid::Uuid>,
) -> Result<Identity, CredentialError> {
    if auth::is_widget_secret(token) {
        let claims =
            relay.shards.visitor_claims(token, organization).await.map_err(CredentialError::from_secret_lookup)?;
        return Ok(Identity { claims, expires_at: auth::now() + relay.config.visitor_token_ttl_secs });
    }
    Ok(relay.verifier.verify(token).await?)
}

/// Serves one connection; `_slot`, its place under the connection limits, is freed when it ends.
pub async fn serve(socket: WebSocket, relay: Arc<Relay>, vsn: Vsn, identity: Option<Identity>, _slot: ConnectionSlot) {
    let id = relay.next_connection_id();
    let (sink, mut stream) = socket.split();
    let (tx, rx) = mpsc::channel::<Message>(relay.config.send_queue);
    let outbox = Arc::new(Outbox::new(id, vsn, tx));
    relay.metrics.connections.inc();

    let writer =
        tokio::spawn(write_frames(sink, rx, outbox.clone(), relay.metrics.clone(), relay.config.write_timeout()));

    let usage = ConnectionUsage::new(relay.limits.per_connection);
    let access = relay.access.connect(id);
    let mut session =
        Session { relay: relay.clone(), outbox: outbox.clone(), identity, channels: HashMap::new(), usage, access };
    let idle = relay.config.idle_timeout();
    let mut idle_deadline = Instant::now() + idle;
    let reason = loop {
        // One timer per connection, on whatever is due first: idle, a token's expiry, a typing
        // indicator's TTL. It is set afresh each turn, after any branch that moved a deadline.
        let deadline = session.next_expiry().map_or(idle_deadline, |expiry| expiry.min(idle_deadline));
        tokio::select! {
            message = stream.next() => {
                idle_deadline = Instant::now() + idle;
                match message {
                    // Handling is boxed: its state (joins query the database) would otherwise be
                    // part of every idle connection's task.
                    Some(Ok(Message::Text(text))) => match protocol::decode_text(vsn, &text) {
                        Ok(frame) => Box::pin(session.handle(frame)).await,
                        Err(err) => session.malformed(&err.to_string()),
                    },
                    Some(Ok(Message::Binary(bytes))) if vsn == Vsn::V2 => match protocol::decode_binary(&bytes) {
                        Ok(frame) => Box::pin(session.handle(frame)).await,
                        Err(protocol::DecodeError::Payload { frame, reason }) => {
                            Box::pin(session.refuse_payload(&frame, reason)).await
                        }
                        Err(err) => session.malformed(&err.to_string()),
                    },
                    Some(Ok(Message::Binary(_))) => session.malformed("binary frames need vsn 2.0.0"),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | None => break CloseReason::ClientClosed,
                    Some(Err(_)) => break CloseReason::TransportError,
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                if Instant::now() >= idle_deadline {
                    outbox.close(CloseReason::IdleTimeout);
                    break CloseReason::IdleTimeout;
                }
                session.expire();
            }
            _ = outbox.kill.cancelled() => break outbox.closed_for().unwrap_or(CloseReason::Closed),
            _ = relay.shutdown.cancelled() => {
                outbox.close(CloseReason::ShuttingDown);
                break CloseReason::ShuttingDown;
            }
            changes = session.access.changes() => Box::pin(session.access_changed(&changes)).await,
        }
    };
    session.leave_all();
    relay.metrics.connections.dec();
    relay.metrics.disconnects.with_label_values(&[reason.label()]).inc();
    outbox.close(reason);
    linger(stream, writer, relay.config.write_timeout()).await;
}

/// Writes queued frames to the socket until the connection ends, then the close frame naming
/// why. A write blocked for `write_timeout` (the client reads nothing) ends the connection as a
/// slow consumer, without a close frame: nothing gets through to that client any more.
async fn write_frames(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Message>,
    outbox: Arc<Outbox>,
    metrics: Arc<Metrics>,
    write_timeout: Duration,
) {
    loop {
        let first = tokio::select! {
            biased;
            _ = outbox.kill.cancelled() => break,
            message = rx.recv() => match message {
                Some(message) => message,
                None => return,
            },
        };
        let written = tokio::select! {
            biased;
            // A connection being closed is not waited for: its close frame goes next.
            _ = outbox.kill.cancelled() => break,
            written = tokio::time::timeout(write_timeout, write_batch(&mut sink, &mut rx, &outbox, first)) => written,
        };
        match written {
            Ok(Some(frames)) => metrics.frames_written.inc_by(frames),
            Ok(None) => return,
            Err(_) => return outbox.close(CloseReason::WriteTimedOut),
        }
    }
    // Frames still queued are dropped: the close frame goes right after what is on its way.
    drop(rx);
    let reason = outbox.closed_for().unwrap_or(CloseReason::Closed);
    let _ = sink.send(Message::Close(Some(CloseFrame { code: reason.code(), reason: reason.text().into() }))).await;
}

/// Feeds `first`, and what queued up behind it (a fan-out burst), to the socket in one write.
/// Returns how many frames, or None if the socket failed.
async fn write_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    rx: &mut mpsc::Receiver<Message>,
    outbox: &Outbox,
    first: Message,
) -> Option<u64> {
    let mut frames = 1;
    let mut fed = sink.feed(first).await.is_ok();
    while fed
        && frames < MAX_FRAMES_PER_WRITE
        && let Ok(message) = rx.try_recv()
    {
        fed = sink.feed(message).await.is_ok();
        frames += 1;
    }
    outbox.drained.notify_one();
    (fed && sink.flush().await.is_ok()).then_some(frames)
}

/// Ends a connection without destroying its close frame, at most `bound` after the decision. A
/// socket closed with unread input is reset, and a reset discards what is still queued (the close
/// frame, behind a slow consumer's backlog): so the client's input is read and thrown away until
/// the writer has handed over the close frame, then until the client answers it or falls quiet.
async fn linger(mut stream: SplitStream<WebSocket>, writer: tokio::task::JoinHandle<()>, bound: Duration) {
    let mut writer = AbortOnDropHandle::new(writer);
    let _ = tokio::time::timeout(bound, async {
        let mut input_open = true;
        loop {
            tokio::select! {
                _ = &mut writer => break,
                message = stream.next(), if input_open => input_open = !ends_input(&message),
            }
        }
        while input_open {
            match tokio::time::timeout(CLOSE_QUIET, stream.next()).await {
                Ok(message) => input_open = !ends_input(&message),
                Err(_) => break,
            }
        }
    })
    .await;
}

/// Whether the client's input is over: its close frame, an error, or the end of the stream.
fn ends_input(message: &Option<Result<Message, axum::Error>>) -> bool {
    matches!(message, None | Some(Err(_)) | Some(Ok(Message::Close(_))))
}

impl Session {
    fn send(&self, frame: &Frame) {
        self.outbox.send_frame(&self.relay.metrics, frame);
    }

    /// Refuses `frame`: the error reply gives the reason, and a dropped message is counted.
    fn refuse(&self, frame: &Frame, refusal: Refusal) {
        if let Some(label) = refusal.drop_label() {
            self.relay.metrics.drops.with_label_values(&[label]).inc();
        }
        self.send(&protocol::error_reply(frame, refusal.to_string()));
    }

    /// Malformed frames are logged and counted, never fatal, as the Realtime server does.
    fn malformed(&self, reason: &str) {
        self.relay.metrics.malformed_frames.inc();
        tracing::debug!(connection = self.outbox.id, reason, "malformed frame ignored");
    }

    /// A broadcast whose header could be read but whose payload is refused: the sender hears why,
    /// as it would for any refused broadcast.
    async fn refuse_payload(&mut self, frame: &Frame, reason: &'static str) {
        self.relay.metrics.malformed_frames.inc();
        self.on_channel(frame, ChannelMessage::Broadcast(Err(Refusal::Payload(reason)))).await;
    }

    /// Counts `action` against the connection's rate; over it, counted in the metrics and the
    /// reason returned.
    fn over_rate(&mut self, action: Action) -> Option<String> {
        let reason = self.usage.hit(action).err()?;
        self.relay.metrics.limited.with_label_values(&[action.label()]).inc();
        Some(reason)
    }

    async fn handle(&mut self, frame: Frame) {
        match ClientMessage::parse(&frame) {
            ClientMessage::Heartbeat => match self.over_rate(Action::Heartbeat) {
                None => self.send(&protocol::reply(&frame, "ok", json!({}))),
                Some(_) => self.outbox.close(CloseReason::TooManyHeartbeats),
            },
            ClientMessage::Join(request) => self.join(&frame, request).await,
            ClientMessage::Channel(message) => self.on_channel(&frame, message).await,
        }
    }

    /// A message for the channel joined as the frame's topic: answered only if it is joined
    /// (a leave always is), and only if the frame comes from its current join.
    async fn on_channel(&mut self, frame: &Frame, message: ChannelMessage) {
        let Some(channel) = self.channels.get(&frame.topic) else {
            return match message {
                ChannelMessage::Leave => self.send(&protocol::reply(frame, "ok", json!({}))),
                _ => self.refuse(frame, Refusal::UnmatchedTopic),
            };
        };
        if frame.join_ref.is_some() && frame.join_ref != channel.join_ref {
            return; // a push from an earlier join of this topic
        }
        match message {
            ChannelMessage::Leave => {
                self.send(&protocol::reply(frame, "ok", json!({})));
                self.close_channel(&frame.topic);
            }
            ChannelMessage::Broadcast(broadcast) => self.broadcast(frame, broadcast),
            ChannelMessage::Presence(change) => self.presence(frame, change),
            ChannelMessage::AccessToken(token) => self.refresh_token(&frame.topic, token).await,
            ChannelMessage::Unknown(event) => self.refuse(frame, Refusal::UnknownEvent(event)),
        }
    }

    /// A join, in four steps: authorize (any refusal is the reply), subscribe, reply, resume.
    async fn join(&mut self, frame: &Frame, request: JoinRequest) {
        let (identity, authorization) = match self.authorize_join(frame, request.access_token.as_deref()).await {
            Ok(granted) => granted,
            Err(refusal) => return self.refuse(frame, refusal),
        };
        let canonical = authorization.topic.clone();
        let presence_state = self.subscribe(frame, &request, identity, authorization);
        self.reply_to_join(frame, &request.postgres_changes, presence_state);
        self.resume(frame, &canonical, request.cursor).await;
    }

    /// Who the join acts as and what the extension lets it do there, or why it is refused.
    async fn authorize_join(
        &mut self,
        frame: &Frame,
        access_token: Option<&str>,
    ) -> Result<(Identity, Authorization), Refusal> {
        let Some(name) = frame.topic.strip_prefix("realtime:") else { return Err(Refusal::UnmatchedTopic) };
        if name.is_empty() {
            return Err(Refusal::TopicNameRequired);
        }
        if let Some(reason) = self.over_rate(Action::Join) {
            return Err(Refusal::JoinRate(reason));
        }
        if self.channels.len() >= self.relay.config.max_channels && !self.channels.contains_key(&frame.topic) {
            return Err(Refusal::TooManyChannels);
        }
        let identity = self.join_identity(access_token, name).await.map_err(Refusal::Credential)?;
        // The topic's organization decides the shard: it is never authorized against another.
        match self.relay.shards.of_topic(name).db.authorize(name, &identity.claims).await {
            Ok(a) if a.read => Ok((identity, a)),
            Ok(a) => {
                let reason = a.reason.unwrap_or_else(|| "access denied".into());
                Err(Refusal::ReadDenied { name: name.to_owned(), reason })
            }
            Err(DbError::InvalidChannel(message)) => Err(Refusal::InvalidChannelName(message)),
            Err(err) => {
                tracing::warn!(%err, "authorizing a join failed");
                Err(Refusal::DatabaseUnavailable)
            }
        }
    }

    /// Subscribes the join's topic to its channel (live events held until [`Session::resume`]);
    /// returns the room's presence state.
    fn subscribe(
        &mut self,
        frame: &Frame,
        request: &JoinRequest,
        identity: Identity,
        authorization: Authorization,
    ) -> Value {
        let topic = &frame.topic;
        // One subscription per channel per connection, or each event would arrive once per
        // spelling (`bcast:`, capitals, the seeds' widget name): a second join of a channel
        // replaces the first, as Phoenix does for a repeated topic.
        let canonical = authorization.topic;
        if let Some(previous) = self.channels.iter().find(|(_, c)| c.canonical == canonical).map(|(t, _)| t.clone()) {
            if previous == *topic {
                self.close_channel(topic);
            } else {
                self.end_channel(&previous, ChannelEnd::JoinedAgainAs(topic.clone()));
            }
        }
        let presence_key = request.presence_key.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let presence_state = self.relay.hub.join(
            &canonical,
            Join {
                outbox: self.outbox.clone(),
                join_topic: topic.clone(),
                self_broadcast: request.self_broadcast,
                cursor: request.cursor.unwrap_or(0),
            },
        );
        self.access.watch(&identity.claims);
        self.channels.insert(
            topic.clone(),
            JoinedChannel {
                canonical,
                join_ref: frame.join_ref.clone(),
                identity,
                may_broadcast: authorization.broadcast,
                may_track: authorization.presence,
                ack: request.ack,
                presence_key,
                typing: None,
            },
        );
        presence_state
    }

    /// The join reply, the presence state, and a `system` error if table changes were asked for.
    fn reply_to_join(&self, frame: &Frame, requested_changes: &[Value], presence_state: Value) {
        let join_ref = frame.join_ref.as_deref();
        let postgres_changes = echo_postgres_changes(requested_changes);
        let unsupported = !postgres_changes.is_empty();
        self.send(&protocol::reply(frame, "ok", json!({ "postgres_changes": postgres_changes })));
        self.send(&protocol::channel_push(&frame.topic, join_ref, "presence_state", presence_state));
        if unsupported {
            let system = json!({
                "extension": "postgres_changes",
                "status": "error",
                "message": "postgres_changes is not supported by this relay: listen for the broadcast events the database sends (message:created, ...)",
                "channel": sub_topic(&frame.topic),
            });
            self.send(&protocol::channel_push(&frame.topic, join_ref, "system", system));
        }
    }

    /// Replays the log after a resuming client's cursor, then lets live events through.
    async fn resume(&mut self, frame: &Frame, canonical: &str, cursor: Option<i64>) {
        let topic = &frame.topic;
        let replayed_to = match cursor {
            None => 0,
            Some(cursor) => {
                self.relay.metrics.resumes.inc();
                match self.replay(canonical, topic, frame.join_ref.as_deref(), cursor).await {
                    Ok(last) => last,
                    Err(err) => {
                        // The client must not believe it is caught up: the channel errors, and
                        // realtime-js rejoins (with its cursor) after its backoff.
                        tracing::warn!(%err, "replaying the log for a resuming client failed");
                        if let Some(channel) = self.detach(topic) {
                            self.send(&protocol::channel_end(topic, channel.join_ref.as_deref(), "phx_error"));
                        }
                        return;
                    }
                }
            }
        };
        self.relay.hub.finish_resume(canonical, self.outbox.id, topic, replayed_to);
    }

    /// Who a join acts as: its own `access_token`, else the connection's credential, which must
    /// not have expired since the connection opened. Supabase API keys are no tokens: realtime-js
    /// sends one when it has no token.
    async fn join_identity(&self, access_token: Option<&str>, topic: &str) -> Result<Identity, CredentialError> {
        match access_token {
            Some(token) => resolve_token(&self.relay, token, shards::organization_of(topic)).await,
            None => Ok(self.identity.as_ref().ok_or(AuthError::NoCredential).and_then(Identity::unexpired)?),
        }
    }

    /// Sends everything on the channel after `cursor` from the log, paced by the client's reading
    /// so that a long replay neither floods the send queue nor grows memory. Returns the last id
    /// sent. Events pruned before the client read them are announced, never skipped silently.
    async fn replay(
        &self,
        canonical: &str,
        join_topic: &str,
        join_ref: Option<&str>,
        mut cursor: i64,
    ) -> Result<i64, DbError> {
        let stall = self.relay.options.replay_stall_timeout;
        // The cursor is an id of the topic's shard's log, and only that log is read after it.
        let db = &self.relay.shards.of_topic(canonical).db;
        loop {
            let page = db.read_log(cursor, Some(canonical)).await?;
            // The tail as of this read or later: if the log was pruned past the cursor, events
            // after it may be missing from the page, gone for good. The client is told (it must
            // reload history) and the replay goes on from where the log now starts.
            let tail = db.log_tail().await?;
            if tail > cursor {
                let lost = history_lost(join_topic, join_ref, cursor, tail);
                let lost = protocol::encode(self.outbox.vsn, &lost).into();
                if !self.outbox.send_paced(&self.relay.metrics, lost, stall).await {
                    return Ok(cursor); // the connection is ending
                }
                cursor = tail;
            }
            let full = page.len() >= crate::db::PAGE as usize;
            // Nothing up to the tail: either the page holds none, or the client was just told.
            for event in page.into_iter().filter(|e| e.id > tail) {
                let frame = rooms::db_frame(self.outbox.vsn, join_topic, &event);
                if !self.outbox.send_paced(&self.relay.metrics, frame, stall).await {
                    return Ok(cursor); // the connection is ending
                }
                cursor = event.id;
                self.relay.metrics.replayed_events.inc();
            }
            // A short page is the end of the log as of this read; anything committed since is
            // held for this subscription by the hub and follows without gaps.
            if !full {
                return Ok(cursor);
            }
        }
    }

    fn broadcast(&mut self, frame: &Frame, broadcast: Result<Broadcast, Refusal>) {
        let Broadcast { event, payload } = match broadcast {
            Ok(broadcast) => broadcast,
            Err(refusal) => return self.refuse(frame, refusal),
        };
        if let Some(reason) = self.over_rate(Action::Broadcast) {
            return self.refuse(frame, Refusal::BroadcastRate(reason));
        }
        if !self.channels[&frame.topic].may_broadcast {
            return self.refuse(frame, Refusal::BroadcastDenied(sub_topic(&frame.topic).to_owned()));
        }
        if let Err(refusal) = self.relay.broadcast_rules.check(&event, &payload) {
            return self.refuse(frame, Refusal::BroadcastRule(refusal));
        }
        let channel = self.channels.get_mut(&frame.topic).expect("checked by on_channel");
        match event.as_str() {
            "typing:start" => channel.typing = Some((payload.clone(), Instant::now())),
            "typing:stop" => channel.typing = None,
            _ => {}
        }
        let (canonical, ack) = (channel.canonical.clone(), channel.ack);
        self.relay.metrics.client_broadcasts.inc();
        self.relay.hub.broadcast(&canonical, Some((self.outbox.id, &frame.topic)), &event, payload);
        if ack {
            self.send(&protocol::reply(frame, "ok", json!({})));
        }
    }

    fn presence(&mut self, frame: &Frame, change: Result<PresenceChange, Refusal>) {
        let channel = self.channels.get(&frame.topic).expect("checked by on_channel");
        if !channel.may_track {
            return self.refuse(frame, Refusal::TrackDenied(sub_topic(&frame.topic).to_owned()));
        }
        match change {
            Ok(PresenceChange::Track(state)) => {
                if Value::Object(state.clone()).to_string().len() > self.relay.config.max_payload_bytes {
                    return self.refuse(frame, Refusal::TrackTooLarge);
                }
                self.relay.hub.track(&channel.canonical, self.outbox.id, &frame.topic, &channel.presence_key, state);
            }
            Ok(PresenceChange::Untrack) => self.relay.hub.untrack(&channel.canonical, self.outbox.id, &frame.topic),
            Err(refusal) => return self.refuse(frame, refusal),
        }
        self.send(&protocol::reply(frame, "ok", json!({})));
    }

    /// `access_token`: no reply; a token that no longer grants the channel ends it.
    async fn refresh_token(&mut self, topic: &str, token: Option<String>) {
        let Some(token) = token else { return };
        match resolve_token(&self.relay, &token, shards::organization_of(sub_topic(topic))).await {
            Ok(identity) => self.reauthorize(topic, identity).await,
            Err(err) => self.end_channel(topic, ChannelEnd::Credential(err)),
        }
    }

    /// Someone's rights changed in the database: the channels joined with their claims are
    /// checked again.
    async fn access_changed(&mut self, changes: &[AccessChange]) {
        let concerned: Vec<(String, Identity)> = self
            .channels
            .iter()
            .filter(|(_, c)| changes.iter().any(|change| change.concerns(&c.identity.claims)))
            .map(|(topic, c)| (topic.clone(), c.identity.clone()))
            .collect();
        for (topic, identity) in concerned {
            self.reauthorize(&topic, identity).await;
        }
    }

    /// Asks the database again whether `identity` may use a joined channel: it keeps the rights
    /// granted now, or ends if it may no longer read.
    async fn reauthorize(&mut self, topic: &str, identity: Identity) {
        let name = sub_topic(topic);
        match self.relay.shards.of_topic(name).db.authorize(name, &identity.claims).await {
            Ok(a) if a.read => {
                if let Some(channel) = self.channels.get_mut(topic) {
                    self.access.watch(&identity.claims);
                    self.access.unwatch(&channel.identity.claims);
                    channel.identity = identity;
                    channel.may_broadcast = a.broadcast;
                    channel.may_track = a.presence;
                }
            }
            Ok(_) | Err(DbError::InvalidChannel(_)) | Err(DbError::Unauthorized(_)) => {
                self.end_channel(topic, ChannelEnd::ReadRevoked(sub_topic(topic).to_owned()));
            }
            Err(err) => tracing::warn!(%err, "re-authorizing a channel failed; keeping it"),
        }
    }

    /// When the first joined channel's token expires or its typing indicator goes stale.
    fn next_expiry(&self) -> Option<Instant> {
        let token = self.channels.values().map(|c| &c.identity).min_by_key(|i| i.expires_at).and_then(Identity::expiry);
        let ttl = self.relay.config.typing_ttl();
        let typing = self.channels.values().filter_map(|c| c.typing.as_ref()?.1.checked_add(ttl)).min();
        token.into_iter().chain(typing).min()
    }

    /// When [`Session::next_expiry`] is due: channels whose token expired end; typing indicators
    /// left on too long stop.
    fn expire(&mut self) {
        let now = auth::now();
        let expired: Vec<String> =
            self.channels.iter().filter(|(_, c)| c.identity.expires_at <= now).map(|(t, _)| t.clone()).collect();
        for topic in expired {
            self.end_channel(&topic, ChannelEnd::TokenExpired);
        }
        let ttl = self.relay.config.typing_ttl();
        let stale: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, c)| c.typing.as_ref().is_some_and(|(_, at)| at.elapsed() >= ttl))
            .map(|(t, _)| t.clone())
            .collect();
        for topic in stale {
            self.stop_typing(&topic);
        }
    }

    /// Ends a channel for a terminal reason: system error, then phx_close.
    fn end_channel(&mut self, topic: &str, why: ChannelEnd) {
        let Some(channel) = self.channels.get(topic) else { return };
        let join_ref = channel.join_ref.clone();
        let message = why.to_string();
        let system =
            json!({ "extension": "system", "status": "error", "message": message, "channel": sub_topic(topic) });
        self.send(&protocol::channel_push(topic, join_ref.as_deref(), "system", system));
        self.close_channel(topic);
    }

    /// Sends the typing:stop a sender that vanished (or went quiet) never sent.
    fn stop_typing(&mut self, topic: &str) {
        let Some(channel) = self.channels.get_mut(topic) else { return };
        let Some((payload, _)) = channel.typing.take() else { return };
        let canonical = channel.canonical.clone();
        self.relay.hub.broadcast(
            &canonical,
            Some((self.outbox.id, topic)),
            "typing:stop",
            client_broadcast::stopped_typing(payload),
        );
    }

    /// Leaves a channel: typing ends, presence leaves, phx_close goes out.
    fn close_channel(&mut self, topic: &str) {
        if let Some(channel) = self.detach(topic) {
            self.send(&protocol::channel_end(topic, channel.join_ref.as_deref(), "phx_close"));
        }
    }

    fn leave_all(&mut self) {
        let topics: Vec<String> = self.channels.keys().cloned().collect();
        for topic in topics {
            self.detach(&topic);
        }
    }

    /// Lets go of a joined channel, without telling the client: typing ends, presence leaves,
    /// and the rights it was joined with are no longer watched.
    fn detach(&mut self, topic: &str) -> Option<JoinedChannel> {
        self.stop_typing(topic);
        let channel = self.channels.remove(topic)?;
        self.relay.hub.leave(&channel.canonical, self.outbox.id, topic);
        self.access.unwatch(&channel.identity.claims);
        Some(channel)
    }
}
