// A quick, self-contained measurement of one relay (not a benchmark, not a test): it creates a
// test database, starts the relay binary, and reports
//   1. idle connections held, each joined to its organization channel, and the relay's RSS;
//   2. messages/s committed through the SQL API by 4 writers and delivered to a subscriber, while
//      every one of those connections also receives each message's conversation:updated (fan-out).
//
//   CAMPFIRE_TEST_PORT=<cluster port> RELAY_BIN=target/release/campfire-relay \
//     node tests/node/measure-relay.js [connections=5000] [messages=2000]
import { readFileSync } from 'node:fs'
import pg from 'pg'
import { WebSocket, createFixture, freePort, startRelay, stopRelay } from './harness.js'

const [connections = 5000, messages = 2000] = process.argv.slice(2).map(Number)
const fixture = await createFixture()
const port = await freePort()
const relay = await startRelay(fixture.database, port)
const rssKb = () => Number(readFileSync(`/proc/${relay.pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)[1])
const url = `ws://127.0.0.1:${port}/realtime/v1/websocket?apikey=${fixture.agentToken}&vsn=2.0.0`
const metric = async (name) => {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
  return Number(text.split('\n').find((l) => l.startsWith(`${name} `))?.split(' ')[1] ?? 0)
}

function joined(topic, onMessage = () => {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url)
    ws.on('error', reject)
    ws.on('open', () => ws.send(JSON.stringify(['1', '1', `realtime:${topic}`, 'phx_join', { config: {} }])))
    ws.once('message', () => {
      ws.on('message', onMessage)
      resolve(ws)
    })
  })
}

try {
  const before = rssKb()
  let fanOut = 0
  const started = Date.now()
  const sockets = []
  for (let i = 0; i < connections; i += 250) {
    const batch = Math.min(250, connections - i)
    sockets.push(...(await Promise.all(Array.from({ length: batch }, () => joined(`org:${fixture.org}`, () => fanOut++)))))
  }
  const joinSeconds = (Date.now() - started) / 1000
  await new Promise((r) => setTimeout(r, 1000))
  const held = rssKb()
  console.log(`${sockets.length} connections joined in ${joinSeconds.toFixed(1)} s; relay RSS ${before} kB -> ${held} kB, ` +
    `~${((held - before) / sockets.length).toFixed(1)} kB per joined connection`)

  const conversation = fixture.visitorA.conversation_id
  let received = 0
  let done
  const all = new Promise((resolve) => { done = resolve })
  const listener = await joined(`org:${fixture.org}:conv:${conversation}`, (data) => {
    if (String(data).includes('"message:created"') && ++received === messages) done()
  })
  const writtenBefore = await metric('campfire_frames_written_total')
  const t0 = Date.now()
  await Promise.all(Array.from({ length: 4 }, async () => {
    const client = new pg.Client({ host: '127.0.0.1', port: Number(process.env.CAMPFIRE_TEST_PORT), user: 'postgres', database: fixture.database })
    await client.connect()
    await client.query(`SELECT set_config('request.jwt.claims', '{"role":"service_role"}', false)`)
    for (let i = 0; i < messages / 4; i++) {
      await client.query("SELECT campfire.send_message($1, 'measure', sender_type => 'agent')", [conversation])
    }
    await client.end()
  }))
  await all
  const seconds = (Date.now() - t0) / 1000
  while (fanOut < messages * sockets.length && Date.now() - t0 < 120_000) await new Promise((r) => setTimeout(r, 50))
  const fanSeconds = (Date.now() - t0) / 1000
  const written = (await metric('campfire_frames_written_total')) - writtenBefore
  console.log(`${messages} messages committed by 4 writers and delivered in ${seconds.toFixed(2)} s: ${(messages / seconds).toFixed(0)} messages/s end to end`)
  console.log(`fan-out: ${fanOut} conversation:updated deliveries to ${sockets.length} connections in ${fanSeconds.toFixed(2)} s: ` +
    `${(fanOut / fanSeconds).toFixed(0)} deliveries/s (relay wrote ${written} frames); relay RSS ${rssKb()} kB`)
  listener.close()
  for (const ws of sockets) ws.close()
} finally {
  await stopRelay(relay)
  await fixture.drop()
}
