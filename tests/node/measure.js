// A quick measurement of one relay (not a benchmark: see issue 5): idle connections it holds and
// the rate it delivers message events. Against a running `scripts/run.sh`:
//   node tests/node/measure.js <relay pid> <agent token> [connections] [messages]
import { readFileSync } from 'node:fs'
import pg from 'pg'
import WebSocket from 'ws'

const [pid, token, connections = '2000', messages = '2000'] = process.argv.slice(2)
const ORG = 'd3000000-0000-4000-8000-000000000001'
const URL = `ws://127.0.0.1:4000/realtime/v1/websocket?apikey=${token}&vsn=2.0.0`
const rss = () => Number(readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)[1])

function joined(topic) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(URL)
    ws.on('error', reject)
    ws.on('open', () => ws.send(JSON.stringify(['1', '1', `realtime:${topic}`, 'phx_join', { config: {} }])))
    ws.once('message', () => resolve(ws))
  })
}

const before = rss()
const started = Date.now()
const sockets = []
for (let i = 0; i < Number(connections); i += 100) {
  sockets.push(...(await Promise.all(Array.from({ length: 100 }, () => joined(`org:${ORG}`)))))
}
const joinSeconds = (Date.now() - started) / 1000
await new Promise((r) => setTimeout(r, 1000))
const perConnection = ((rss() - before) * 1024) / sockets.length
console.log(`${sockets.length} connections joined in ${joinSeconds.toFixed(2)} s; relay RSS ${rss()} kB, ~${(perConnection / 1024).toFixed(1)} kB per connection`)
for (const ws of sockets) ws.close()

const listener = await joined(`org:${ORG}:conversations`)
const db = { host: '127.0.0.1', port: 54329, user: 'postgres', database: 'campfire' }
const admin = new pg.Client(db)
await admin.connect()
const { rows } = await admin.query('SELECT id FROM campfire.conversations ORDER BY created_at LIMIT 1')
await admin.end()
let received = 0
const total = Number(messages)
const done = new Promise((resolve) => listener.on('message', (data) => {
  if (String(data).includes('"message:created"') && ++received === total) resolve()
}))
const t0 = Date.now()
await Promise.all(Array.from({ length: 4 }, async () => {
  const client = new pg.Client(db)
  await client.connect()
  await client.query(`SELECT set_config('request.jwt.claims', '{"role":"service_role"}', false)`)
  for (let i = 0; i < total / 4; i++) {
    await client.query("SELECT campfire.send_message($1, 'measure', sender_type => 'agent')", [rows[0].id])
  }
  await client.end()
}))
await done
const seconds = (Date.now() - t0) / 1000
console.log(`${total} messages committed by 4 writers and delivered in ${seconds.toFixed(2)} s: ${(total / seconds).toFixed(0)} messages/s`)
listener.close()
