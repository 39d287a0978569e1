// The real @supabase/realtime-js, current (vsn 2.0.0) and pre-2.91 (vsn 1.0.0), against the relay.
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { RealtimeClient as CurrentClient } from '@supabase/realtime-js'
import { RealtimeClient as LegacyClient } from 'realtime-js-v1'
import { createFixture, realtimeClient, freePort, startRelay, stopRelay, subscribe, waitFor } from '../harness.js'

const versions = [
  { name: 'realtime-js 2.119 (vsn 2.0.0)', RealtimeClient: CurrentClient, vsn: '2.0.0' },
  { name: 'realtime-js 2.90 (vsn 1.0.0)', RealtimeClient: LegacyClient, vsn: '1.0.0' },
]

for (const { name, RealtimeClient, vsn } of versions) {
  describe(name, () => {
    let fixture
    let relay
    let port
    const clients = []

    const client = (apikey) => realtimeClient(RealtimeClient, port, apikey, clients)

    before(async () => {
      fixture = await createFixture()
      port = await freePort()
      relay = await startRelay(fixture.database, port)
    })

    after(async () => {
      for (const c of clients) c.disconnect()
      await stopRelay(relay)
      await fixture.drop()
    })

    test('speaks the expected serializer', () => {
      const c = client(fixture.agentToken)
      assert.equal(c.vsn, vsn)
    })

    test('subscribes and receives message:created after an insert through the SQL API', async () => {
      const topic = `org:${fixture.org}:conv:${fixture.visitorA.conversation_id}`
      const channel = client(fixture.agentToken).channel(`bcast:${topic}`, { config: { broadcast: { ack: false } } })
      const received = waitFor((done) => channel.on('broadcast', { event: 'message:created' }, done), 'message:created')
      const { status } = await subscribe(channel)
      assert.equal(status, 'SUBSCRIBED')
      const seq = await fixture.sendAsAgent(fixture.visitorA.conversation_id, `hello from SQL (${vsn})`)
      const message = await received
      assert.equal(message.event, 'message:created')
      assert.equal(message.payload.message.content, `hello from SQL (${vsn})`)
      assert.equal(String(message.payload.message.seq), String(seq))
      assert.ok(message.payload.cursor > 0)
    })

    test('a typing broadcast from the widget reaches the agent', async () => {
      const topic = `org:${fixture.org}:conv:${fixture.visitorA.conversation_id}:typing`
      const agentChannel = client(fixture.agentToken).channel(topic)
      const typing = waitFor((done) => agentChannel.on('broadcast', { event: 'typing:start' }, done), 'typing:start')
      assert.equal((await subscribe(agentChannel)).status, 'SUBSCRIBED')
      const widgetChannel = client(fixture.visitorA.session_secret).channel(topic, { config: { broadcast: { ack: true } } })
      assert.equal((await subscribe(widgetChannel)).status, 'SUBSCRIBED')
      const result = await widgetChannel.send({ type: 'broadcast', event: 'typing:start', payload: { userName: 'Val', isTyping: true } })
      assert.equal(result, 'ok')
      const event = await typing
      assert.deepEqual(event.payload, { userName: 'Val', isTyping: true })
    })

    if (vsn === '2.0.0') {
      test('channel.httpSend() broadcasts over HTTP, and is refused with the reason where the caller may not speak', async () => {
        const topic = `org:${fixture.org}:conv:${fixture.visitorA.conversation_id}:typing`
        const listener = client(fixture.visitorA.session_secret).channel(topic)
        const typing = waitFor((done) => listener.on('broadcast', { event: 'typing:start' }, done), 'typing:start')
        assert.equal((await subscribe(listener)).status, 'SUBSCRIBED')
        const agentChannel = client(fixture.agentToken).channel(topic)
        assert.deepEqual(await agentChannel.httpSend('typing:start', { isTyping: true }), { success: true })
        assert.deepEqual((await typing).payload, { isTyping: true })
        const stranger = client(fixture.visitorB.session_secret).channel(topic)
        await assert.rejects(stranger.httpSend('typing:start', { isTyping: true }), /visitors may only join their own conversation/)
      })

      test('a binary broadcast carrying metadata (persist, on a private channel) is delivered', async () => {
        const topic = `org:${fixture.org}:conv:${fixture.visitorA.conversation_id}:typing`
        const config = { private: true, broadcast: { ack: true } }
        const listener = client(fixture.visitorA.session_secret).channel(topic, { config })
        const typing = waitFor((done) => listener.on('broadcast', { event: 'typing:start' }, done), 'typing:start')
        assert.equal((await subscribe(listener)).status, 'SUBSCRIBED')
        const agentChannel = client(fixture.agentToken).channel(topic, { config })
        assert.equal((await subscribe(agentChannel)).status, 'SUBSCRIBED')
        const sent = await agentChannel.send({ type: 'broadcast', event: 'typing:start', payload: { isTyping: true }, persist: true })
        assert.equal(sent, 'ok')
        const event = await typing
        assert.deepEqual(event.payload, { isTyping: true })
      })
    }

    test('a broadcast under a database event name is refused, and reaches no one', async () => {
      const topic = `org:${fixture.org}:agents:presence`
      const visitor = client(fixture.visitorA.session_secret).channel(topic)
      const received = []
      visitor.on('broadcast', { event: '*' }, (event) => received.push(event))
      assert.equal((await subscribe(visitor)).status, 'SUBSCRIBED')
      const agent = client(fixture.agentToken).channel(topic, { config: { broadcast: { ack: true } } })
      assert.equal((await subscribe(agent)).status, 'SUBSCRIBED')
      const forged = { userId: fixture.agent, availability: 'online', cursor: 1e9 }
      assert.equal(await agent.send({ type: 'broadcast', event: 'agent:status:online', payload: forged }), 'error')
      assert.equal(await agent.send({ type: 'broadcast', event: 'agent:mood', payload: { cursor: 1e9 } }), 'error')
      assert.equal(await agent.send({ type: 'broadcast', event: 'agent:mood', payload: { mood: 'sunny' } }), 'ok')
      await waitFor((done) => { const t = setInterval(() => { if (received.length) { clearInterval(t); done() } }, 20) }, 'the honest broadcast')
      assert.deepEqual(received.map((e) => [e.event, e.payload]), [['agent:mood', { mood: 'sunny' }]])
    })

    test('presence syncs between two clients', async () => {
      const topic = `org:${fixture.org}:agents:presence`
      const first = client(fixture.agentToken).channel(topic, { config: { presence: { key: 'agent-1' } } })
      first.on('presence', { event: 'sync' }, () => {})
      assert.equal((await subscribe(first)).status, 'SUBSCRIBED')
      assert.equal(await first.track({ name: 'Nadia' }), 'ok')
      const second = client(fixture.agentToken).channel(topic, { config: { presence: { key: 'agent-2' } } })
      const synced = waitFor((done) => second.on('presence', { event: 'sync' }, () => {
        const state = second.presenceState()
        if (state['agent-1']) done(state)
      }), 'presence sync')
      assert.equal((await subscribe(second)).status, 'SUBSCRIBED')
      const state = await synced
      assert.equal(state['agent-1'][0].name, 'Nadia')
    })

    test('an unauthorized join is reported as CHANNEL_ERROR with the reason', async () => {
      const topic = `org:${fixture.org}:conv:${fixture.visitorA.conversation_id}`
      const channel = client(fixture.visitorB.session_secret).channel(topic)
      const { status, err } = await subscribe(channel)
      assert.equal(status, 'CHANNEL_ERROR')
      assert.match(String(err?.message ?? err), /visitors may only join their own conversation/)
      channel.unsubscribe()
    })

    test('reconnects after the relay restarts and resumes from its cursor: nothing committed meanwhile is lost', async () => {
      const topic = `org:${fixture.org}:conv:${fixture.visitorA.conversation_id}`
      const channel = client(fixture.agentToken).channel(topic, { config: { broadcast: { cursor: 0 } } })
      const contents = []
      channel.on('broadcast', { event: 'message:created' }, (event) => {
        // realtime-js forwards config.broadcast as given and rejoins with the same object:
        // keeping the cursor current there makes each rejoin resume where this client stopped.
        channel.params.config.broadcast.cursor = event.payload.cursor
        contents.push(event.payload.message.content)
      })
      let subscribed = 0
      const rejoined = waitFor((done) => channel.subscribe((status) => {
        if (status === 'SUBSCRIBED' && ++subscribed === 2) done()
      }), 'a second SUBSCRIBED')
      await waitFor((done) => { const t = setInterval(() => { if (subscribed >= 1) { clearInterval(t); done() } }, 20) }, 'first SUBSCRIBED')
      await fixture.sendAsAgent(fixture.visitorA.conversation_id, 'before the restart')
      await waitFor((done) => { const t = setInterval(() => { if (contents.includes('before the restart')) { clearInterval(t); done() } }, 20) }, 'the first message')
      await stopRelay(relay)
      await fixture.sendAsAgent(fixture.visitorA.conversation_id, 'while the relay was down')
      relay = await startRelay(fixture.database, port)
      await rejoined
      await fixture.sendAsAgent(fixture.visitorA.conversation_id, 'after the restart')
      await waitFor((done) => { const t = setInterval(() => { if (contents.includes('after the restart')) { clearInterval(t); done() } }, 20) }, 'the message after the restart')
      const mine = contents.filter((c) => ['before the restart', 'while the relay was down', 'after the restart'].includes(c))
      assert.deepEqual(mine, ['before the restart', 'while the relay was down', 'after the restart'])
    })
  })
}
