// The agent's dashboard: /dashboard#org=<organization id>&token=<agent JWT>.
import { EventStream, api, connectRealtime, renderMessage, setConnection, typingIndicator, typingSender } from '/static/common.js'

const params = new URLSearchParams(location.hash.slice(1))
const org = params.get('org')
const token = params.get('token')
// Calls by conversation id name the organization: a relay serving several shards routes by it.
const orgHeader = { 'x-organization-id': org }
const me = JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/'))).sub
const $ = (id) => document.getElementById(id)
const conversations = new Map()
let selected = null
let typingStream = null
let stopTyping = () => {}
const showTyping = typingIndicator($('typing'))
const client = connectRealtime(token)

function renderConversation(c) {
  conversations.set(c.id, { ...conversations.get(c.id), ...c })
  const data = conversations.get(c.id)
  let item = $('conversations').querySelector(`[data-id="${c.id}"]`)
  if (!item) {
    item = document.createElement('li')
    item.dataset.id = c.id
    item.addEventListener('click', () => open(c.id))
    $('conversations').prepend(item)
  }
  item.dataset.status = data.status
  item.classList.toggle('selected', selected === c.id)
  item.innerHTML = ''
  const name = document.createElement('strong')
  name.textContent = data.customer_name || data.visitor_id || 'Visitor'
  const unread = document.createElement('span')
  unread.className = 'unread'
  unread.dataset.count = String(data.unread ?? 0)
  unread.textContent = data.unread ? String(data.unread) : ''
  const preview = document.createElement('span')
  preview.className = 'preview'
  preview.textContent = `[${data.status}${data.assigned_to ? (data.assigned_to === me ? ', mine' : ', assigned') : ''}] ${data.last_message_preview ?? ''}`
  item.append(name, unread, preview)
}

function showConversationState() {
  const c = conversations.get(selected)
  if (!c) return
  $('conversation-title').textContent = c.customer_name || c.visitor_id || 'Visitor'
  $('conversation-status').textContent = c.status
  $('claim').hidden = !(c.status === 'pending' || c.status === 'bot')
}

async function markRead(id) {
  await api(`/api/dashboard/conversations/${id}/read`, { method: 'POST', token, headers: orgHeader, body: {} }).catch(() => {})
  renderConversation({ id, unread: 0 })
}

// Visitors' read receipts arrive on the open conversation's channel. Only that one is watched:
// a channel per conversation ever opened would reach the relay's channel cap.
let receiptStream = null
function watchReceipts(id) {
  receiptStream?.stop()
  const c = conversations.get(id)
  receiptStream = new EventStream({
    client, token, topic: `org:${c.organization_id}:conv:${id}`,
    onEvent: (event, payload) => {
      if (event === 'read:receipt' && payload.readerType === 'customer' && id === selected) {
        $('read-state').textContent = `Seen by visitor (up to #${payload.lastReadSeq})`
      }
    },
  }).start()
}

async function loadConversations() {
  const { conversations: list } = await api(`/api/dashboard/conversations?organizationId=${org}&limit=100`, { token })
  list.reverse().forEach(renderConversation)
}

/** The conversation's messages; rendering is by id, so loading again only adds what is new. */
async function loadMessages(id) {
  const { messages } = await api(`/api/dashboard/conversations/${id}/messages?limit=200`, { token, headers: orgHeader })
  if (selected === id) messages.forEach((m) => renderMessage($('messages'), m, { mine: m.sender_type !== 'customer' }))
}

/**
 * A stream that had seen no event has no cursor to resume from after a reconnect: what was
 * committed meanwhile is loaded over HTTP instead.
 */
function reloadAfterReconnect() {
  loadConversations().catch(() => {})
  if (selected) loadMessages(selected).catch(() => {})
}

async function open(id) {
  selected = id
  $('conversation').hidden = false
  $('messages').innerHTML = ''
  $('read-state').textContent = ''
  for (const item of $('conversations').children) item.classList.toggle('selected', item.dataset.id === id)
  showConversationState()
  await loadMessages(id)
  markRead(id)
  watchReceipts(id)
  typingStream?.stop()
  const conversation = conversations.get(id)
  typingStream = new EventStream({
    client, token, topic: `org:${conversation.organization_id}:conv:${id}:typing`,
    onEvent: (event, payload) => { if (payload?.role === 'visitor' && selected === id) showTyping(event === 'typing:start') },
  }).start()
  stopTyping()
  stopTyping = typingSender($('input'), (event) => typingStream.send(event, { role: 'agent', isTyping: event === 'typing:start' }))
}

async function main() {
  await loadConversations()

  new EventStream({
    client, token, topic: `org:${org}`, pollPath: '/api/dashboard/events',
    onState: (state) => setConnection($('connection'), state),
    onResubscribed: reloadAfterReconnect,
    onEvent: (event, payload) => {
      if (event === 'conversation:created' || event === 'conversation:updated') {
        renderConversation(payload.conversation)
        if (payload.conversation.id === selected) showConversationState()
      }
    },
  }).start()
  new EventStream({
    client, token, topic: `org:${org}:conversations`, pollPath: '/api/dashboard/events',
    onResubscribed: reloadAfterReconnect,
    onEvent: (event, payload) => {
      if (event !== 'message:created') return
      const message = payload.message
      if (message.conversation_id === selected) {
        renderMessage($('messages'), message, { mine: message.sender_type !== 'customer' })
        if (message.sender_type === 'customer') {
          showTyping(false)
          markRead(selected)
        }
      } else if (message.sender_type === 'customer') {
        const c = conversations.get(message.conversation_id)
        renderConversation({ id: message.conversation_id, unread: (c?.unread ?? 0) + 1 })
      }
    },
  }).start()
  const presence = client.channel(`org:${org}:agents:presence`, { config: { presence: { key: me } } })
  presence.on('presence', { event: 'sync' }, () => {
    $('agents-online').textContent = `${Object.keys(presence.presenceState()).length} agent(s) here`
  })
  presence.subscribe((status) => { if (status === 'SUBSCRIBED') presence.track({ at: new Date().toISOString() }) })

  $('availability').addEventListener('change', (e) =>
    api('/api/dashboard/availability', { method: 'POST', token, body: { organizationId: org, availability: e.target.value } }))
  $('claim').addEventListener('click', async () => {
    renderConversation(await api(`/api/dashboard/conversations/${selected}/claim`, { method: 'POST', token, headers: orgHeader }))
    showConversationState()
  })
  $('assign-me').addEventListener('click', async () => {
    renderConversation(await api(`/api/dashboard/conversations/${selected}/assign`, { method: 'POST', token, headers: orgHeader, body: { assigneeId: me } }))
  })
  $('composer').addEventListener('submit', async (submit) => {
    submit.preventDefault()
    const content = $('input').value.trim()
    if (!content || !selected) return
    $('input').value = ''
    stopTyping()
    typingStream?.send('typing:stop', { role: 'agent', isTyping: false })
    const draft = { id: null, client_message_id: crypto.randomUUID(), content, sender_type: 'agent' }
    const list = $('messages')
    renderMessage(list, draft, { mine: true, pending: true })
    try {
      const { message } = await api(`/api/dashboard/conversations/${selected}/messages`, {
        method: 'POST', token, headers: orgHeader, body: { content, clientMessageId: draft.client_message_id },
      })
      renderMessage(list, message, { mine: true })
    } catch (error) {
      renderMessage(list, draft, { mine: true, failed: true }).title = error.message
    }
  })
  document.body.dataset.ready = 'true'
}

main().catch((error) => setConnection($('connection'), `error: ${error.message}`))
