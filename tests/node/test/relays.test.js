// Two relays on one database, with the real realtime-js on each side (one client per serializer),
// and a postgres_changes binding the relay does not stream (it must still reach SUBSCRIBED).
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { RealtimeClient as CurrentClient } from '@supabase/realtime-js'
import { RealtimeClient as LegacyClient } from 'realtime-js-v1'
import { createFixture, realtimeClient, freePort, startRelay, stopRelay, subscribe, waitFor } from '../harness.js'

describe('two relays, current and legacy realtime-js', () => {
  let fixture
  const relays = []
  const ports = []
  const clients = []

  const client = (RealtimeClient, port, apikey) => realtimeClient(RealtimeClient, port, apikey, clients)

  before(async () => {
    fixture = await createFixture()
    for (let i = 0; i < 2; i++) {
      ports.push(await freePort())
      relays.push(await startRelay(fixture.database, ports[i]))
    }
  })

  after(async () => {
    for (const c of clients) c.disconnect()
    for (const relay of relays) await stopRelay(relay)
    await fixture.drop()
  })

  test('a typing broadcast sent (as a binary frame) through relay A reaches a vsn 1.0.0 client on relay B', async () => {
    const topic = `org:${fixture.org}:conv:${fixture.visitorA.conversation_id}:typing`
    const agent = client(LegacyClient, ports[1], fixture.agentToken).channel(topic)
    const typing = waitFor((done) => agent.on('broadcast', { event: 'typing:start' }, done), 'typing:start on B')
    assert.equal((await subscribe(agent)).status, 'SUBSCRIBED')
    const widget = client(CurrentClient, ports[0], fixture.visitorA.session_secret).channel(topic, { config: { broadcast: { ack: true } } })
    assert.equal((await subscribe(widget)).status, 'SUBSCRIBED')
    assert.equal(await widget.send({ type: 'broadcast', event: 'typing:start', payload: { userName: 'Val', isTyping: true } }), 'ok')
    assert.deepEqual((await typing).payload, { userName: 'Val', isTyping: true })
  })

  test('presence tracked on relay A syncs to a client on relay B, and leaves when it untracks', async () => {
    const topic = `org:${fixture.org}:agents:presence`
    const onA = client(CurrentClient, ports[0], fixture.agentToken).channel(topic, { config: { presence: { key: 'agent-on-a' } } })
    onA.on('presence', { event: 'sync' }, () => {})
    assert.equal((await subscribe(onA)).status, 'SUBSCRIBED')
    const onB = client(LegacyClient, ports[1], fixture.agentToken).channel(topic, { config: { presence: { key: 'agent-on-b' } } })
    let joined
    const seen = new Promise((resolve) => { joined = resolve })
    let left
    const gone = new Promise((resolve) => { left = resolve })
    onB.on('presence', { event: 'sync' }, () => {
      const state = onB.presenceState()
      if (state['agent-on-a']?.[0]?.status === 'online') joined(state)
      else if (!state['agent-on-a'] && joined.done) left()
    })
    assert.equal((await subscribe(onB)).status, 'SUBSCRIBED')
    assert.equal(await onA.track({ status: 'online' }), 'ok')
    const state = await waitFor((done) => seen.then(done), 'agent-on-a on relay B')
    assert.equal(state['agent-on-a'][0].status, 'online')
    joined.done = true
    assert.equal(await onA.untrack(), 'ok')
    await waitFor((done) => gone.then(done), 'agent-on-a leaving relay B')
  })

  test('a channel with postgres_changes bindings still reaches SUBSCRIBED and is told they are not streamed', async () => {
    const topic = `org:${fixture.org}:conv:${fixture.visitorA.conversation_id}`
    const channel = client(CurrentClient, ports[0], fixture.agentToken).channel(topic)
    channel.on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'messages' }, () => {})
    const system = waitFor((done) => channel.on('system', {}, done), 'the system message')
    const created = waitFor((done) => channel.on('broadcast', { event: 'message:created' }, done), 'message:created')
    const { status, err } = await subscribe(channel)
    assert.equal(status, 'SUBSCRIBED', String(err))
    const message = await system
    assert.equal(message.extension, 'postgres_changes')
    assert.equal(message.status, 'error')
    await fixture.sendAsAgent(fixture.visitorA.conversation_id, 'broadcasts still flow')
    assert.equal((await created).payload.message.content, 'broadcasts still flow')
  })
})
