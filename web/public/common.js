// What the widget and the dashboard share: the HTTP API, the realtime client, a channel that
// resumes from its cursor and falls back to polling, and message rendering.
import { RealtimeClient } from '/static/dist/realtime.js'

export async function api(path, { method = 'GET', token, body, headers = {} } = {}) {
  const response = await fetch(path, {
    method,
    headers: {
      ...(body ? { 'Content-Type': 'application/json' } : {}),
      ...(token ? { Authorization: `Bearer ${token}` } : {}),
      ...headers,
    },
    body: body ? JSON.stringify(body) : undefined,
  })
  const data = await response.json().catch(() => ({}))
  if (!response.ok) {
    const error = new Error(data.error || `HTTP ${response.status}`)
    error.status = response.status
    throw error
  }
  return data
}

export function connectRealtime(token) {
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/realtime/v1`
  return new RealtimeClient(url, { params: { apikey: token }, reconnectAfterMs: (tries) => Math.min(500 * 2 ** tries, 5000) })
}

/**
 * One channel's events, in cursor order and once each: live over the relay, replayed from the
 * cursor on every rejoin, and polled over HTTP while the channel is in error (never a dead stop).
 */
export class EventStream {
  constructor({ client, topic, token, pollPath, onEvent, onState = () => {}, onResubscribed = () => {} }) {
    Object.assign(this, { client, topic, token, pollPath, onEvent, onState, onResubscribed })
    this.cursor = null
    this.poller = null
    this.subscriptions = 0
  }

  start() {
    const broadcast = this.cursor === null ? {} : { cursor: this.cursor }
    this.channel = this.client.channel(this.topic, { config: { broadcast } })
    this.channel.on('broadcast', { event: '*' }, (message) => this.deliver(message.event, message.payload))
    this.channel.subscribe((status) => {
      if (status === 'SUBSCRIBED') {
        this.stopPolling()
        this.onState('live')
        if (++this.subscriptions > 1 && this.cursor === null) this.onResubscribed()
      } else {
        this.onState('fallback')
        this.startPolling()
      }
    })
    return this
  }

  /** Leaves the channel and stops polling: what a page does with a stream it no longer shows. */
  stop() {
    this.stopPolling()
    if (this.channel) this.client.removeChannel(this.channel)
    this.channel = null
  }

  /** Sends a client broadcast (typing); dropped silently when the channel is not up. */
  send(event, payload) {
    if (this.channel) this.channel.send({ type: 'broadcast', event, payload }).catch(() => {})
  }

  deliver(event, payload) {
    const cursor = payload?.cursor
    if (typeof cursor === 'number') {
      if (this.cursor !== null && cursor <= this.cursor) return
      this.cursor = cursor
      // realtime-js rejoins with this same object: every rejoin resumes from here.
      this.channel.params.config.broadcast.cursor = cursor
    }
    this.onEvent(event, payload)
  }

  startPolling() {
    if (this.poller || !this.pollPath) return
    const poll = async () => {
      try {
        const after = this.cursor ?? 0
        const { events } = await api(`${this.pollPath}?after=${after}&topic=${encodeURIComponent(this.topic)}`, { token: this.token })
        for (const e of events) this.deliver(e.event, { ...e.payload, cursor: e.cursor })
      } catch {}
    }
    poll()
    this.poller = setInterval(poll, 1500)
  }

  stopPolling() {
    clearInterval(this.poller)
    this.poller = null
  }
}

/** Adds or updates a message bubble; an optimistic one is reconciled by its client id. */
export function renderMessage(list, message, { mine, pending = false, failed = false }) {
  let item = list.querySelector(`[data-id="${message.id}"]`)
  if (!item && message.client_message_id) item = list.querySelector(`[data-client-id="${message.client_message_id}"]`)
  if (!item) {
    item = document.createElement('li')
    list.append(item)
  }
  if (message.id) item.dataset.id = message.id
  if (message.client_message_id) item.dataset.clientId = message.client_message_id
  if (message.seq) item.dataset.seq = message.seq
  item.className = [mine ? 'mine' : '', message.message_type === 'note' ? 'note' : '', pending ? 'pending' : '', failed ? 'failed' : '']
    .filter(Boolean).join(' ')
  item.textContent = message.content
  list.scrollTop = list.scrollHeight
  return item
}

/** Shows who is typing for a few seconds, or until they stop. */
export function typingIndicator(element) {
  let timer
  return (on) => {
    clearTimeout(timer)
    element.hidden = !on
    if (on) timer = setTimeout(() => { element.hidden = true }, 6000)
  }
}

/** Calls `send` at most every two seconds while the user types, and once when they stop. */
export function typingSender(input, send) {
  let last = 0
  let idle
  input.addEventListener('input', () => {
    const now = Date.now()
    if (now - last > 2000) {
      last = now
      send('typing:start')
    }
    clearTimeout(idle)
    idle = setTimeout(() => { last = 0; send('typing:stop') }, 2500)
  })
  return () => { clearTimeout(idle); last = 0 }
}

export function setConnection(element, state) {
  element.dataset.state = state
  element.textContent = { live: 'Connected', fallback: 'Reconnecting… (messages still arrive)', connecting: 'Connecting…' }[state] ?? state
}
