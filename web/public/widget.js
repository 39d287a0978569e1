// The visitor's chat widget. Embed with one tag: <script src="https://relay/static/embed.js"
// data-organization-id="…"></script>, or open /widget?org=… directly.
import { EventStream, api, connectRealtime, renderMessage, setConnection, typingIndicator, typingSender } from '/static/common.js'

const org = new URLSearchParams(location.search).get('org')
const $ = (id) => document.getElementById(id)
const list = $('messages')
const showTyping = typingIndicator($('typing'))

function visitorId() {
  let id = localStorage.getItem('campfire.visitor')
  if (!id) localStorage.setItem('campfire.visitor', (id = `v-${crypto.randomUUID()}`))
  return id
}

async function startSession() {
  const secretKey = `campfire.secret:${org}`
  const request = (sessionSecret) => api('/api/widget/auth', {
    method: 'POST', headers: { 'x-organization-id': org }, body: { visitorId: visitorId(), sessionSecret: sessionSecret ?? undefined },
  })
  let session
  try {
    session = await request(localStorage.getItem(secretKey))
  } catch (error) {
    if (error.status !== 401) throw error
    // The stored secret was revoked, or belongs to a lost session: start over as a new visitor.
    localStorage.removeItem(secretKey)
    localStorage.removeItem('campfire.visitor')
    session = await request(null)
  }
  localStorage.setItem(secretKey, session.sessionSecret)
  return session
}

function showReadUpTo(seq) {
  for (const item of list.querySelectorAll('li.mine')) {
    if (Number(item.dataset.seq) <= seq && !item.querySelector('.receipt')) {
      const receipt = document.createElement('span')
      receipt.className = 'receipt'
      receipt.textContent = 'Read'
      item.append(receipt)
    }
  }
}

function setAgentsOnline(count) {
  const status = $('agent-status')
  status.dataset.online = String(count > 0)
  status.className = `status ${count > 0 ? 'online' : 'offline'}`
  status.textContent = count > 0 ? 'An agent is online' : 'Agents offline'
}

async function main() {
  if (!org) throw new Error('the widget needs ?org=<organization id>')
  const session = await startSession()
  const token = session.accessToken
  const conversation = session.conversationId
  const config = await api('/api/widget/config', { headers: { 'x-organization-id': org } })
  $('title').textContent = `Chat with ${config.name}`
  setAgentsOnline(config.agents_online)

  const render = (message) => renderMessage(list, message, { mine: message.sender_type === 'customer' })
  const loadHistory = async () => {
    const { messages } = await api(`/api/widget/conversations/${conversation}/messages?limit=200`, { token })
    messages.forEach(render)
  }
  const markRead = () => api(`/api/widget/conversations/${conversation}/read`, { method: 'POST', token, body: {} }).catch(() => {})

  const client = connectRealtime(token)
  const base = `org:${org}:conv:${conversation}`
  new EventStream({
    client, token, topic: base, pollPath: '/api/widget/events',
    onState: (state) => setConnection($('connection'), state),
    onResubscribed: loadHistory,
    onEvent: (event, payload) => {
      if (event === 'message:created' || event === 'message:updated') {
        render(payload.message)
        if (payload.message.sender_type !== 'customer') {
          showTyping(false)
          markRead()
        }
      } else if (event === 'read:receipt' && payload.readerType === 'agent') {
        showReadUpTo(payload.lastReadSeq)
      }
    },
  }).start()
  const typing = new EventStream({
    client, token, topic: `${base}:typing`,
    onEvent: (event, payload) => { if (payload?.role === 'agent') showTyping(event === 'typing:start') },
  }).start()
  new EventStream({
    client, token, topic: `org:${org}:agents:presence`,
    onEvent: (event) => {
      if (event.startsWith('agent:status:')) {
        api('/api/widget/config', { headers: { 'x-organization-id': org } }).then((c) => setAgentsOnline(c.agents_online))
      }
    },
  }).start()

  await loadHistory()
  markRead()
  const stopTyping = typingSender($('input'), (event) => typing.send(event, { role: 'visitor', isTyping: event === 'typing:start' }))

  $('composer').addEventListener('submit', async (submit) => {
    submit.preventDefault()
    const content = $('input').value.trim()
    if (!content) return
    $('input').value = ''
    stopTyping()
    typing.send('typing:stop', { role: 'visitor', isTyping: false })
    const draft = { id: null, client_message_id: crypto.randomUUID(), content, sender_type: 'customer' }
    renderMessage(list, draft, { mine: true, pending: true })
    try {
      const { message } = await api('/api/widget/messages', {
        method: 'POST', token, body: { conversationId: conversation, content, clientMessageId: draft.client_message_id },
      })
      render(message)
    } catch (error) {
      renderMessage(list, draft, { mine: true, failed: true }).title = error.message
    }
  })
  document.body.dataset.ready = 'true'
}

main().catch((error) => {
  setConnection($('connection'), `error: ${error.message}`)
})
