// How supabase-js hands tokens to realtime-js, against the relay: a Supabase Auth access token
// (aud "authenticated") from the `accessToken` option, with a Supabase API key as apikey.
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { RealtimeClient } from '@supabase/realtime-js'
import { createFixture, freePort, jwt, realtimeClient, startRelay, stopRelay, subscribe, waitFor } from '../harness.js'

describe('realtime-js 2.119 with the accessToken option', () => {
  let fixture
  let relay
  let port
  let topic
  const clients = []
  // What supabase-js passes as apikey when the app gives it a publishable key.
  const publishableKey = 'sb_publishable_node_test'
  const supabaseToken = () => jwt({
    aud: 'authenticated',
    iss: 'https://project-ref.supabase.co/auth/v1',
    role: 'authenticated',
    sub: fixture.agent,
    session_id: 'c0ffee00-0000-4000-8000-000000000001',
    is_anonymous: false,
  })
  const client = () => realtimeClient(RealtimeClient, port, publishableKey, clients, {
    accessToken: async () => supabaseToken(),
  })

  before(async () => {
    fixture = await createFixture()
    port = await freePort()
    relay = await startRelay(fixture.database, port)
    topic = `org:${fixture.org}:conv:${fixture.visitorA.conversation_id}`
  })

  after(async () => {
    for (const c of clients) c.disconnect()
    await stopRelay(relay)
    await fixture.drop()
  })

  test('awaiting setAuth() before subscribe: the first join carries the token and is SUBSCRIBED', async () => {
    const realtime = client()
    await realtime.setAuth()
    const channel = realtime.channel(topic)
    const received = waitFor((done) => channel.on('broadcast', { event: 'message:created' }, done), 'message:created')
    const { status, err } = await subscribe(channel)
    assert.equal(status, 'SUBSCRIBED', String(err))
    await fixture.sendAsAgent(fixture.visitorA.conversation_id, 'through a Supabase Auth token')
    assert.equal((await received).payload.message.content, 'through a Supabase Auth token')
  })

  test('subscribing at once: one CHANNEL_ERROR saying the join had no token, then SUBSCRIBED on the rejoin', async () => {
    const channel = client().channel(topic)
    const statuses = []
    await waitFor((done) => channel.subscribe((status, err) => {
      statuses.push({ status, err })
      if (status === 'SUBSCRIBED') done()
    }), 'SUBSCRIBED after the rejoin')
    assert.deepEqual(statuses.map((s) => s.status), ['CHANNEL_ERROR', 'SUBSCRIBED'])
    assert.match(String(statuses[0].err?.message), /this join carries no access_token/)
  })
})
