// A test database with pg_campfire, a relay process, and realtime-js clients that talk to it.
// Needs CAMPFIRE_TEST_PORT (a running cluster with the extension installed, postgres trusted on
// 127.0.0.1) and RELAY_BIN (the campfire-relay binary); scripts/test.sh provides both.
import { spawn } from 'node:child_process'
import { createHmac, randomUUID } from 'node:crypto'
import { readFileSync } from 'node:fs'
import net from 'node:net'
import pg from 'pg'
import WebSocket from 'ws'

const PG_PORT = Number(process.env.CAMPFIRE_TEST_PORT)
const RELAY_BIN = process.env.RELAY_BIN
export const JWT_SECRET = 'node-test-secret'
export const WAIT_MS = 10_000

if (!PG_PORT || !RELAY_BIN) {
  throw new Error('set CAMPFIRE_TEST_PORT and RELAY_BIN (scripts/test.sh does)')
}

const base64url = (data) => Buffer.from(data).toString('base64url')

/** An HS256 JWT, as an identity provider would issue. */
export function jwt(claims) {
  const header = base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))
  const body = base64url(JSON.stringify({ exp: Math.floor(Date.now() / 1000) + 3600, ...claims }))
  const signature = createHmac('sha256', JWT_SECRET).update(`${header}.${body}`).digest('base64url')
  return `${header}.${body}.${signature}`
}

/** The fixture the Rust tests use too: an organization, an agent and visitors' conversations. */
const FIXTURE_SQL = readFileSync(new URL('../fixtures/organization.sql', import.meta.url), 'utf8')

async function query(database, sql, params = []) {
  const client = new pg.Client({ host: '127.0.0.1', port: PG_PORT, user: 'postgres', database })
  await client.connect()
  try {
    return await client.query(sql, params)
  } finally {
    await client.end()
  }
}

/** A fresh database with an organization, an agent and a visitor's conversation. */
export async function createFixture() {
  const database = `campfire_node_${process.pid}_${randomUUID().slice(0, 8)}`
  await query('postgres', `CREATE DATABASE ${database}`)
  await query(database, 'CREATE EXTENSION pg_campfire')
  await query('postgres', `DO $$ BEGIN
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'campfire_relay_node') THEN
        CREATE ROLE campfire_relay_node LOGIN IN ROLE campfire_relay;
      END IF; END $$`)
  // One session: the fixture's function lives in its pg_temp.
  const [, { rows }] = await query(database, `${FIXTURE_SQL}
      SELECT * FROM pg_temp.campfire_fixture('Node', 'node', 'Nadia', ARRAY['visitor-a', 'visitor-b'])`)
  const { organization: org, agent } = rows[0]
  const [visitorA, visitorB] = rows.map(({ conversation_id, widget_session_id, session_secret }) =>
    ({ conversation_id, widget_session_id, session_secret }))
  return {
    database,
    org,
    agent,
    agentToken: jwt({ role: 'authenticated', sub: agent }),
    visitorA,
    visitorB,
    async sendAsAgent(conversation, content) {
      const claims = JSON.stringify({ role: 'authenticated', sub: agent })
      return (await query(database, `SELECT set_config('request.jwt.claims', $1, false),
          (campfire.send_message($2, $3)).seq`, [claims, conversation, content])).rows[0].seq
    },
    async drop() {
      await query('postgres', `DROP DATABASE IF EXISTS ${database} WITH (FORCE)`)
    },
  }
}

export async function freePort() {
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

/** Starts the relay binary on `port`; resolves once /healthz says it is listening. */
export async function startRelay(database, port, extraEnv = {}) {
  const child = spawn(RELAY_BIN, [], {
    env: {
      ...process.env,
      DATABASE_URL: `host=127.0.0.1 port=${PG_PORT} user=campfire_relay_node dbname=${database}`,
      CAMPFIRE_LISTEN: `127.0.0.1:${port}`,
      CAMPFIRE_JWT_SECRET: JWT_SECRET,
      RUST_LOG: 'campfire_relay=warn',
      ...extraEnv,
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  })
  const deadline = Date.now() + WAIT_MS
  while (Date.now() < deadline) {
    try {
      const response = await fetch(`http://127.0.0.1:${port}/healthz`)
      if (response.ok) return child
    } catch {}
    await new Promise((r) => setTimeout(r, 50))
  }
  child.kill('SIGKILL')
  throw new Error('relay did not become healthy')
}

export async function stopRelay(child) {
  if (child.exitCode !== null) return
  const exited = new Promise((resolve) => child.once('exit', resolve))
  child.kill('SIGTERM')
  await exited
}

/** Resolves with the first value `register` passes to its callback, or rejects after WAIT_MS. */
export function waitFor(register, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), WAIT_MS)
    register((value) => {
      clearTimeout(timer)
      resolve(value)
    })
  })
}

/** Subscribes and resolves with the first terminal status (and its error). */
export function subscribe(channel) {
  return waitFor((done) => channel.subscribe((status, err) => {
    if (status !== 'SUBSCRIBED' || !err) done({ status, err })
  }), `a status from ${channel.topic}`)
}

export { WebSocket }

/**
 * A realtime-js client of the given version for the relay on `port`, remembered in `clients`;
 * `options` adds to or overrides the client's options (e.g. `accessToken`).
 */
export function realtimeClient(RealtimeClient, port, apikey, clients, options = {}) {
  const client = new RealtimeClient(`ws://127.0.0.1:${port}/realtime/v1`, {
    params: { apikey },
    transport: WebSocket,
    reconnectAfterMs: () => 200,
    ...options,
  })
  clients.push(client)
  return client
}
